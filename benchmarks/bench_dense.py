"""Dense vs crop extraction on a synthetic Visium HD slide (8 um bins, >= 200,000 under tissue).

The slide is generated in code at 0.5 um/px (H&E-like tissue: stained ellipse with nuclei, on glass)
and written as a tiled, JPEG-compressed pyramidal TIFF with tifffile; its bins are the 8 um grid
points under the tissue mask (:func:`stfeat.dense.tissue_points`, from the thumbnail). Then, in the
same process, with the same encoder and fields of view:

* dense: :func:`stfeat.dense.dense_features` over every bin at every field of view (features kept,
  float16), timed end to end (tile reads, forwards, pooling);
* crop: :func:`stfeat.batching.extract_points` on a seeded sample of ``--crop-sample`` bins (one
  forward per bin and field of view), timed and extrapolated linearly to all bins.

Prints forwards, crops/s (dense: bins x scales per second, the crop-equivalent rate), wall time and
the ratios (targets: >= 50x fewer forwards and >= 20x less time), and how close dense features are
to crop features on the sampled bins (median over feature dims of the Pearson r across bins).

Examples::

    nice -n 10 python benchmarks/bench_dense.py --encoder efficientnet-lite0 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors
    python benchmarks/bench_dense.py --encoder uni --random-weights --device cuda --tiles-per-batch 8
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
UM_PER_PX = 0.5


def make_slide(path: Path, radius_um: float = 2150.0, margin_um: float = 150.0, seed: int = 0) -> tuple[int, int]:
    """Write an H&E-like pyramidal TIFF at 0.5 um/px: an irregular stained ellipse with nuclei."""
    import tifffile
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    side = int(round(2 * (radius_um + margin_um) / UM_PER_PX))
    side -= side % 32
    c = side / 2
    # tissue: ellipse with a wobbly edge, on a 1/16 grid then upsampled
    g = side // 16
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32) * 16
    ang = np.arctan2(yy - c, xx - c)
    rad = radius_um / UM_PER_PX * (1 + 0.06 * np.sin(3 * ang) + 0.04 * np.cos(7 * ang))
    coarse_mask = ((xx - c) ** 2 / 1.0 + (yy - c) ** 2 / 0.92) < rad**2
    tone = ndi.gaussian_filter(rng.normal(size=(g, g)).astype(np.float32), 6)
    tone = (tone - tone.min()) / (np.ptp(tone) + 1e-6)
    up = lambda a: np.repeat(np.repeat(a, 16, 0), 16, 1)  # noqa: E731
    mask = up(coarse_mask)
    t = up(tone)
    img = np.full((side, side, 3), 244, np.uint8)
    pink = np.stack([225 - 40 * t, 150 - 50 * t, 190 - 30 * t], -1).astype(np.uint8)
    img[mask] = pink[mask]
    del pink, t
    # nuclei: about one per 90 um^2 of tissue, radius 3-5 px, haematoxylin purple
    area_px = int(mask.sum())
    n_nuc = int(area_px * UM_PER_PX**2 / 90.0)
    cy, cx = rng.integers(0, side, n_nuc), rng.integers(0, side, n_nuc)
    keep = mask[cy, cx]
    cy, cx = cy[keep], cx[keep]
    r = 4
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (oy**2 + ox**2) <= r * r
    oy, ox = oy[disc], ox[disc]
    Y = np.clip(cy[:, None] + oy[None], 0, side - 1).ravel()
    X = np.clip(cx[:, None] + ox[None], 0, side - 1).ravel()
    shade = rng.integers(60, 110, size=len(cy)).astype(np.uint8)
    col = np.repeat(shade, len(oy))
    img[Y, X, 0] = col + 30
    img[Y, X, 1] = col // 2
    img[Y, X, 2] = col + 60
    del Y, X, col
    levels = [img]
    while levels[-1].shape[0] > 1024:
        a = levels[-1]
        h2, w2 = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h2, :w2].reshape(h2 // 2, 2, w2 // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8))
    res = 1e4 / UM_PER_PX
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(levels[0], tile=(256, 256), subifds=len(levels) - 1, photometric="rgb", compression="jpeg",
                 resolution=(res, res), resolutionunit="CENTIMETER")
        for i, a in enumerate(levels[1:], start=1):
            tw.write(a, tile=(256, 256), subfiletype=1, photometric="rgb", compression="jpeg",
                     resolution=(res / 2**i, res / 2**i), resolutionunit="CENTIMETER")
    return side, side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--weights", default=str(REPO.parent / "shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
    ap.add_argument("--random-weights", action="store_true", help="seeded random weights (no file needed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scales", default="112,224,448")
    ap.add_argument("--bin-um", type=float, default=8.0)
    ap.add_argument("--crop-sample", type=int, default=2000)
    ap.add_argument("--tile-px", type=int, default=None)
    ap.add_argument("--tiles-per-batch", type=int, default=1)
    ap.add_argument("--crop-workers", type=int, default=1)
    ap.add_argument("--radius-um", type=float, default=2150.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import torch

    from stfeat import dense as D
    from stfeat.batching import _build_encoder, extract_points
    from stfeat.slide import open_slide

    scales = [float(s) for s in args.scales.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dense_"))
    work.mkdir(parents=True, exist_ok=True)
    tif = work / "synthetic_visium_hd.tif"
    t0 = time.perf_counter()
    if not tif.exists():
        make_slide(tif, radius_um=args.radius_um)
    t_make = time.perf_counter() - t0
    slide = open_slide(tif)
    assert abs(slide.um_per_px - UM_PER_PX) < 1e-6, slide.um_per_px
    t0 = time.perf_counter()
    bins = D.tissue_points(slide, step_um=args.bin_um, um_per_px=UM_PER_PX)
    t_mask = time.perf_counter() - t0
    n = len(bins)
    print(f"slide {slide.dimensions[0]} x {slide.dimensions[1]} px at {UM_PER_PX} um/px, "
          f"{len(slide.level_dimensions)} levels ({tif}, made in {t_make:.1f} s); "
          f"{n:,} {args.bin_um:g}-um bins under the tissue mask ({t_mask:.1f} s)")
    enc = _build_encoder(args.encoder, weights=None if args.random_weights else args.weights,
                         pretrained=not args.random_weights, device=args.device)
    print(f"encoder {enc.spec.name} ({enc.weights_id}), input {enc.spec.input_px} px, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, scales {scales} um")

    # dense: every bin, every scale
    stats = D.DenseStats()
    t0 = time.perf_counter()
    feats, _ = D.dense_features(slide, bins, encoder=enc, scales_um=scales, um_per_px=UM_PER_PX,
                                tile_px=args.tile_px, tiles_per_batch=args.tiles_per_batch, stats=stats,
                                dtype=np.float16)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_dense = time.perf_counter() - t0
    fw_dense = sum(stats.forwards.values())

    # crop: a seeded sample, extrapolated
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, size=min(args.crop_sample, n), replace=False))
    t0 = time.perf_counter()
    crops = extract_points(slide, bins[idx], encoder=enc, scales_um=scales, um_per_px=UM_PER_PX,
                           num_workers=args.crop_workers, device=args.device)
    t_crop_sample = time.perf_counter() - t0
    fw_crop = n * len(scales)
    t_crop = t_crop_sample * n / len(idx)

    crops_per_s_dense = n * len(scales) / t_dense
    crops_per_s_crop = len(idx) * len(scales) / t_crop_sample
    print()
    print(f"{'mode':6} {'forwards':>10} {'wall s':>10} {'crops/s (equiv.)':>17}  note")
    print(f"{'dense':6} {fw_dense:10,d} {t_dense:10.1f} {crops_per_s_dense:17.1f}  tiles of {stats.tile_px} px, "
          f"per scale {stats.forwards}")
    print(f"{'crop':6} {fw_crop:10,d} {t_crop:10.1f} {crops_per_s_crop:17.1f}  extrapolated from {len(idx):,} bins "
          f"({t_crop_sample:.1f} s)")
    print(f"ratios: {fw_crop / fw_dense:,.0f}x fewer forwards (target >= 50x), {t_crop / t_dense:,.1f}x less time "
          f"(target >= 20x)")
    print(f"dense: {fw_dense / t_dense:.2f} forwards/s, {n / t_dense:,.0f} bins/s (all {len(scales)} scales)")
    for s in feats:
        a, b = feats[s][idx].astype(np.float32), crops[s]
        ok = b.std(0) > 1e-6
        r = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in np.flatnonzero(ok)]
        print(f"  {s} um: dense vs crop features on the sampled bins, median r over dims {np.nanmedian(r):.3f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
