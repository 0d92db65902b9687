"""Crop vs dense features on real HER2ST: forwards, time, and prediction r with the same head and split.

Extracts the sections of patient C (../shared/data/her2st, C2-C6) and of patient A (A1,
../shared/data/her2st_A1) twice with the same encoder and fields of view, once per spot crop
(``mode="crop"``) and once from tissue tiles (``mode="dense"``), into two cache roots. Then fits the
same ridge head on each with two splits:

* ``lopo`` over C2-C6 + A1: train C -> test A1 and train A1 -> test C (the numbers of record);
* ``loso`` over C2-C6 only: leave one section out (one patient: not a cross-patient figure).

Prints one table (mode, forwards, extraction seconds, mean Pearson r per split) and the per-fold r.

Example (CPU, real ImageNet weights)::

    nice -n 10 python benchmarks/dense_vs_crop_her2st.py --encoder efficientnet-lite0 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --out /tmp/dvc
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _manifest(path: Path, with_a1: bool) -> Path:
    rows = ["sample_id,patient,path"] + [f"C{i},C,{SHARED / 'her2st'}" for i in range(2, 7)]
    if with_a1:
        rows.append(f"A1,A,{SHARED / 'her2st_A1'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--weights", default=str(REPO.parent / "shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
    ap.add_argument("--scales", default="112,224,448")
    ap.add_argument("--genes", default="hvg:50")
    ap.add_argument("--head", default="ridge")
    ap.add_argument("--modes", default="crop,dense")
    ap.add_argument("--tile-px", type=int, default=None)
    ap.add_argument("--out", default="dense_vs_crop_out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import h5py

    try:  # the API refactor (issue 9) renames the path-returning entry point extract_caches
        from stfeat.extract import extract
    except ImportError:
        from stfeat.extraction import extract_caches as extract

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scales = [float(s) for s in args.scales.split(",")]
    man_all = _manifest(out / "c_and_a1.csv", True)
    man_c = _manifest(out / "c_only.csv", False)
    rows = []
    for mode in args.modes.split(","):
        cache = out / f"cache_{mode}"
        t0 = time.perf_counter()
        paths = extract(man_all, encoder=args.encoder, weights=args.weights, scales_um=scales, cache_dir=cache,
                        k_neighbors=8, mode=mode, tile_px=args.tile_px, num_workers=0 if mode == "dense" else None)
        secs = time.perf_counter() - t0
        forwards, n_spots, stored_secs = 0, 0, 0.0
        for p in paths:
            with h5py.File(p, "r") as f:
                n = int(f.attrs["n_spots"])
                n_spots += n
                forwards += int(f.attrs.get("dense_forwards", n * len(scales))) if mode == "dense" else n * len(scales)
                stored_secs += float(f.attrs.get("dense_seconds", 0.0))
        res = {"mode": mode, "spots": n_spots, "forwards": forwards, "extract_s": round(secs, 1)}
        for split, man in (("lopo", man_all), ("loso", man_c)):
            r = _fit(man, encoder=args.encoder, cache_dir=cache, heads=(args.head,), genes=args.genes, split=split,
                     out_dir=out / f"fit_{mode}_{split}", plots=False)
            res[f"r_{split}"] = _mean_r(r.out_dir, args.head)
            res[f"folds_{split}"] = _fold_r(out / f"fit_{mode}_{split}", args.head)
        rows.append(res)
        print(json.dumps(res), flush=True)
    print(f"\nencoder {args.encoder} ({Path(args.weights).name}), scales {args.scales} um, genes {args.genes} "
          f"(selected per fold on training data), target log1p_cp10k, head {args.head}")
    print(f"{'mode':6} {'spots':>6} {'forwards':>9} {'extract s':>10} {'r lopo (C<->A1)':>16} {'r loso (C)':>11}")
    for r in rows:
        print(f"{r['mode']:6} {r['spots']:6d} {r['forwards']:9d} {r['extract_s']:10.1f} {r['r_lopo']:16.3f} "
              f"{r['r_loso']:11.3f}")
    for r in rows:
        print(r["mode"], "per fold lopo:", r["folds_lopo"], "loso:", r["folds_loso"])
    (out / "summary.json").write_text(json.dumps(rows, indent=2))


def _fit(samples, **kw):
    """stfeat.fit.fit, or stfeat.fitting.fit_report after the API refactor (head=, scales_um=)."""
    try:
        from stfeat.fit import fit

        return fit(samples, **kw)
    except ImportError:
        from stfeat.fitting import fit_report
    kw["head"] = kw.pop("heads")
    if "scales" in kw:
        kw["scales_um"] = kw.pop("scales")
    return fit_report(samples, **kw)


def _mean_r(fit_dir: Path, head: str) -> float:
    """The metric of record (mean over folds of the mean Pearson r over genes, all test spots)."""
    import pandas as pd

    df = pd.read_csv(fit_dir / "metrics.csv")
    return float(df[(df["head"] == head) & (df["fold"] == "mean")]["mean_r"].iloc[0])


def _fold_r(fit_dir: Path, head: str) -> dict:
    import pandas as pd

    df = pd.read_csv(fit_dir / "metrics.csv")
    df = df[(df["head"] == head) & (df["fold"] != "mean")]
    return {str(t): round(float(v), 3) for t, v in zip(df["test_samples"], df["mean_r"])}


if __name__ == "__main__":
    main()
