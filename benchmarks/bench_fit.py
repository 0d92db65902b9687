"""Benchmark stage two's data path: loading cached features into a FeatureSet and building inputs.

Target (issue 4): loading cached features for 100,000 spots takes under 1 s per scale (HDF5 reads
only, float16 -> float32). Writes a synthetic cache of that size to a temporary folder, then times

* ``SampleFeatures.from_cache`` with one scale and with all scales (includes barcodes, coords and the
  neighbour graph), and the alignment to the sample's barcode order (shuffled, the worst case);
* building ``X`` for flat heads (scales concatenated, + neighbour mean) and attention tokens;
* the per-gene Pearson r of the metric of record on (n_spots, 50) arrays.

Usage: ``python benchmarks/bench_fit.py [--n-spots 100000] [--dim 1024] [--scales 112,224,448]``
Prints one line per measurement; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-spots", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--scales", default="112,224,448")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the temporary cache")
    args = ap.parse_args()

    from stfeat.cache import write_cache
    from stfeat.evaluate import pearson_per_gene
    from stfeat.features import SampleFeatures
    from stfeat.head_inputs import flat_features, token_features
    from stfeat.neighbors import spatial_neighbors

    scales = [float(s) for s in args.scales.split(",")]
    n, d = args.n_spots, args.dim
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    coords = (np.c_[gx.ravel(), gy.ravel()][:n] * 200.0).astype(np.float64)  # 100 um pitch at 0.5 um/px
    barcodes = np.array([f"spot{i:07d}" for i in range(n)])
    tmp = Path(tempfile.mkdtemp(prefix="bench_fit_", dir=args.dir))
    try:
        t = time.perf_counter()
        idx, dist = spatial_neighbors(coords * 0.5, args.k)
        feats = {s: rng.standard_normal((n, d), dtype=np.float32) for s in scales}
        path = write_cache(tmp / "bench.h5", barcodes=barcodes, coords=coords, features=feats, neighbors=idx,
                           neighbor_dist_um=dist, attrs={"encoder": "bench", "sample_id": "bench", "um_per_px": 0.5})
        del feats
        size_mb = path.stat().st_size / 2**20
        print(f"setup: wrote {n} spots x {d} dims x {len(scales)} scales (float16, {size_mb:.0f} MiB) "
              f"in {time.perf_counter() - t:.1f} s")

        one = [scales[0]]
        t1, sf1 = _best(lambda: SampleFeatures.from_cache(path, scales=one))
        print(f"load 1 scale : {t1:.3f} s for {n} spots x {d} dims (target < 1 s per scale)")
        tall, sf = _best(lambda: SampleFeatures.from_cache(path, scales=scales))
        print(f"load {len(scales)} scales: {tall:.3f} s = {tall / len(scales):.3f} s per scale (target < 1 s)")
        shuffled = barcodes[rng.permutation(n)]
        ta, sfa = _best(lambda: sf.aligned_to(shuffled))
        print(f"align to a shuffled barcode order: {ta:.3f} s")
        names = [f"{s:g}" for s in scales]
        tx, X = _best(lambda: flat_features(sf, names))
        print(f"flat X {X.shape}: {tx:.3f} s")
        txn, Xn = _best(lambda: flat_features(sf, names, neighbor_mean=True, k=args.k), repeat=1)
        print(f"flat X + neighbour mean {Xn.shape}: {txn:.3f} s")
        del X, Xn
        m = min(n, 20_000)
        sub = SampleFeatures("sub", None, barcodes[:m], coords[:m], 0.5, {k: v[:m] for k, v in sf.features.items()})
        tt, T = _best(lambda: token_features(sub, names, k=args.k), repeat=1)
        print(f"attention tokens for {m} spots {T['X'].shape}: {tt:.3f} s ({T['X'].nbytes / 2**30:.2f} GiB)")
        Y = rng.standard_normal((n, 50))
        P = Y + rng.standard_normal((n, 50))
        tp, _ = _best(lambda: pearson_per_gene(Y, P))
        print(f"Pearson r per gene, {n} spots x 50 genes: {tp:.3f} s")
        del sf1, sfa
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
