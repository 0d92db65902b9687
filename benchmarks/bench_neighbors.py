"""Spatial neighbour graph: tiled FAISS search against one flat FAISS search, side by side.

Visium-like hexagonal lattices (100 um pitch, 2 um jitter). The flat search is O(n^2), so it is run
only up to ``--flat-max`` spots; both must give identical neighbours. Prints seconds and ratios.

    python benchmarks/bench_neighbors.py [--sizes 20000,50000,100000,500000] [--k 8] [--flat-max 50000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def lattice(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n))
    i, j = np.meshgrid(np.arange(side), np.arange(side))
    c = np.stack([i * 100.0 + (j % 2) * 50.0, j * 100.0 * np.sqrt(3) / 2], -1).reshape(-1, 2)
    return c + rng.normal(0, 2, c.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="20000,50000,100000,500000")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--flat-max", type=int, default=50_000)
    args = ap.parse_args()

    import stfeat.neighbors as N

    tiled_min = N._TILED_MIN
    for n in (int(s) for s in args.sizes.split(",")):
        c = lattice(n)
        N._TILED_MIN = 0
        t = time.perf_counter()
        idx, _ = N.spatial_neighbors(c, args.k, use_gpu=False)
        t_tiled = time.perf_counter() - t
        line = f"{len(c):>8d} spots, k={args.k}: tiled {t_tiled:7.2f} s"
        if len(c) <= args.flat_max:
            N._TILED_MIN = 10**12
            t = time.perf_counter()
            idx_flat, _ = N.spatial_neighbors(c, args.k, use_gpu=False)
            t_flat = time.perf_counter() - t
            line += (f" | flat {t_flat:7.2f} s | speed-up {t_flat / t_tiled:5.1f}x | identical "
                     f"{np.array_equal(idx, idx_flat)}")
        print(line, flush=True)
    N._TILED_MIN = tiled_min
    print(f"spatial_neighbors tiles from {tiled_min} spots on the CPU (GPU: one flat search)")


if __name__ == "__main__":
    main()
