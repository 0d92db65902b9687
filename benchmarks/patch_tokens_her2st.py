"""Patch tokens on HER2ST across patients (issue 11): attention with and without the cached patch tokens, vs ridge.

Extracts ``--tokens G`` features of HER2ST patient C (C2-C6) and patient A (A1) from ../shared/data (a
``{encoder}+tok{G}`` cache folder; the pooled features are the plain ones), prints the cache bytes per spot of
the pooled features and of the tokens, then ``stfeat.cross_validate`` with ``split="lopo"`` (train C -> test A1,
train A1 -> test C), genes ``hvg:50`` chosen per fold on the training patient, target ``log1p_cp10k``, per-slide
standardisation, for ``ridge``, ``attention`` (pooled scales + neighbours) and ``attention`` with
``patch_tokens=True``, printing each fold's mean Pearson r over the 50 genes and the fit time. Usage::

    python benchmarks/patch_tokens_her2st.py --encoder efficientnet-lite0 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --cache-dir /tmp/tok_cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--weights", default=str(REPO.parent / "shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
    ap.add_argument("--scales", default="112,224")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--genes", default="hvg:50")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/stfeat_tokens_cache"))
    ap.add_argument("--max-epochs", type=int, default=100)
    args = ap.parse_args()

    import stfeat as st
    from stfeat.heads.attention import AttentionHead
    from stfeat.patch_tokens import cache_bytes_per_spot

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = args.cache_dir / "manifest_C_A1.csv"
    rows = ["sample_id,patient,path"] + [f"C{i},C,{SHARED / 'her2st'}" for i in range(2, 7)]
    manifest.write_text("\n".join(rows + [f"A1,A,{SHARED / 'her2st_A1'}"]) + "\n")
    scales = [float(s) for s in args.scales.split(",")]
    t = time.perf_counter()
    fs = st.extract(str(manifest), encoder=args.encoder, weights=args.weights, scales_um=scales,
                    cache_dir=args.cache_dir, tokens=args.tokens, device="cpu")
    print(f"extract ({args.encoder}, --tokens {args.tokens}, scales {scales}): {time.perf_counter() - t:.1f} s "
          f"(0 s when cached), {fs!r}")
    per = [cache_bytes_per_spot(fs.samples[s].source) for s in fs.sample_ids]
    feat = sum(p["features"] for p in per) / len(per)
    tok = sum(p["tokens"] for p in per) / len(per)
    print(f"cache bytes per spot (all scales): pooled features {feat:,.0f}, tokens {tok:,.0f}, "
          f"total {feat + tok:,.0f} ({(feat + tok) / feat:.1f}x the cache without tokens)")
    heads = {"ridge": "ridge",
             "attention": AttentionHead(max_epochs=args.max_epochs, device="cpu"),
             "attention+patch_tokens": AttentionHead(max_epochs=args.max_epochs, device="cpu", patch_tokens=True)}
    for name, head in heads.items():
        t = time.perf_counter()
        cv = st.cross_validate(fs, head=head, genes=args.genes, split="lopo", standardize="slide", conformal=None)
        dt = time.perf_counter() - t
        folds = {r["test_samples"]: r["mean_r"] for r in cv.rows}
        skip = [(r.get("reduced_to_skip"), round(float(r.get("residual_share", float("nan"))), 3)) for r in cv.rows]
        print(f"{name}: " + ", ".join(f"test {k}: r {v:.3f}" for k, v in folds.items())
              + f"; mean {sum(folds.values()) / len(folds):.3f}; {dt:.1f} s"
              + (f"; (reduced_to_skip, residual_share) per fold {skip}" if name != "ridge" else ""))


if __name__ == "__main__":
    main()
