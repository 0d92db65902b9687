"""What each feature variant costs at extraction: seconds per spot, side by side in one process.

Runs the same spots of one real section through the same encoder with every view set of
:mod:`stfeat.views` (plain, background fill, Macenko, Reinhard, d8 test-time augmentation, d8 + HED
jitter) and prints wall seconds and the ratio to plain. The variants run in turn, twice (the first
pass warms the decoded slide and the encoder; the second is the one printed), so the ratios compare
like with like on whatever machine runs it.

    python benchmarks/bench_views.py ../shared/data/her2st --section C2 --n-spots 64 \\
        --encoder efficientnet-lite0 --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = {
    "plain": {},
    "bgfill": {"background": "fill"},
    "macenko": {"stain_norm": "macenko"},
    "reinhard": {"stain_norm": "reinhard"},
    "d8": {"tta": "d8"},
    "d8+hed0.05": {"tta": "d8", "tta_hed_jitter": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a sample folder (e.g. ../shared/data/her2st)")
    ap.add_argument("--section", default=None, help="section of a multi-section folder (e.g. C2)")
    ap.add_argument("--n-spots", type=int, default=64)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--scales-um", default="112,224")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    import stfeat as st
    from stfeat.batching import _build_encoder, extract_points
    from stfeat.views import ViewSpec

    sample = st.read_sample(args.data, sample_id=args.section) if args.section else st.read_sample(args.data)
    slide = sample.slide
    slide.load()
    idx = np.linspace(0, len(sample.coords) - 1, min(args.n_spots, len(sample.coords))).astype(int)
    pts = np.asarray(sample.coords, float)[idx]
    scales = [float(s) for s in args.scales_um.split(",")]
    enc = _build_encoder(args.encoder, weights=args.weights, pretrained=True, device="cpu")
    names = [v for v in args.variants.split(",") if v]
    times: dict[str, float] = {}
    feats: dict[str, np.ndarray] = {}
    for rep in range(2):
        for name in names:
            spec = ViewSpec.build(**VARIANTS[name])
            t0 = time.perf_counter()
            out = extract_points(slide, pts, encoder=enc, scales_um=scales, um_per_px=sample.um_per_px,
                                 batch_size=args.batch_size, num_workers=0, device="cpu", views=spec)
            times[name] = time.perf_counter() - t0
            feats[name] = np.concatenate([out[k] for k in sorted(out, key=float)], axis=1)
    base = times["plain"] if "plain" in times else None
    print(f"{sample.sample_id}: {len(pts)} spots x {len(scales)} fields of view ({args.scales_um} um), encoder "
          f"{args.encoder}, batch {args.batch_size}, CPU, num_workers 0 (decode and views in the main process)")
    print(f"{'variant':<12} {'views':>5} {'seconds':>8} {'ms/spot':>8} {'x plain':>8} {'r(feat, plain)':>15}")
    for name in names:
        v = ViewSpec.build(**VARIANTS[name]).n_views
        ratio = f"{times[name] / base:.2f}" if base else ""
        r = ""
        if "plain" in feats:
            a, b = feats["plain"].ravel(), feats[name].ravel()
            r = f"{np.corrcoef(a, b)[0, 1]:.3f}"
        print(f"{name:<12} {v:>5} {times[name]:>8.2f} {1000 * times[name] / len(pts):>8.1f} {ratio:>8} {r:>15}")


if __name__ == "__main__":
    main()
