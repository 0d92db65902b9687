"""Cross-patient rows of the paper heads (issue 11): per-fold r next to ridge and hest-ridge, with fit times.

Runs ``stfeat.fit.fit(split="lopo")`` once per head on a manifest of two patients (HER2ST patient C
sections + A1) whose caches already exist, and prints a markdown table: per fold (train -> test)
the mean Pearson r over the fold's genes, and the wall time of the whole call (both folds plus
the final refit on all samples).

Usage::

    python benchmarks/bench_paper_heads.py MANIFEST --encoder efficientnet-lite0 \\
        --cache-dir /work/cache_shared --heads ridge,hest-ridge,contrastive,slide-transformer
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--heads", default="ridge,hest-ridge,contrastive,slide-transformer")
    ap.add_argument("--head-params", default="{}", help="JSON: {head name: {param: value}}")
    ap.add_argument("--genes", default="hvg:50")
    ap.add_argument("--label", action="append", default=[],
                    help="NAME=HEAD:JSON, a head under another name with its parameters")
    args = ap.parse_args()

    from stfeat.fit import fit

    runs = [(h, h, json.loads(args.head_params).get(h)) for h in args.heads.split(",") if h]
    for lab in args.label:
        name, rest = lab.split("=", 1)
        head, params = rest.split(":", 1)
        runs.append((name, head, json.loads(params)))
    rows = []
    for label, head, params in runs:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = fit(args.manifest, encoder=args.encoder, cache_dir=args.cache_dir, heads=[head],
                      head_params={head: params} if params else None, split="lopo",
                      genes=args.genes, out_dir=out, plots=False)
            dt = time.perf_counter() - t0
            import pandas as pd

            m = pd.read_csv(res.out_dir / "metrics.csv")
        folds = m[m["fold"] != "mean"]
        cells = {f"{r.train_samples} -> {r.test_samples}": r.mean_r for r in folds.itertuples()}
        rows.append((label, cells, dt))
        print(f"{label}: {cells} ({dt:.1f} s)", flush=True)
    cols = list(rows[0][1])
    print("\n| head | " + " | ".join(cols) + " | mean | fit time (s) |")
    print("|---|" + "---|" * (len(cols) + 2))
    for label, cells, dt in rows:
        vals = [cells.get(c, float("nan")) for c in cols]
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals)
              + f" | {sum(vals) / len(vals):.3f} | {dt:.1f} |")


if __name__ == "__main__":
    main()
