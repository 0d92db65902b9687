"""Spatial neighbour graph: scipy's cKDTree (stfeat) against the FAISS searches it replaced.

``stfeat.neighbors.spatial_neighbors`` uses :class:`scipy.spatial.cKDTree`. Until issue 9 it used
FAISS: one flat search (O(n^2)) below 20,000 spots, tile by tile above. That code lives on only
here, to compare side by side on Visium-like hexagonal lattices (100 um pitch, 2 um jitter). The
flat search is run only up to ``--flat-max`` spots. All must give identical neighbours (ties by
index). Prints seconds and ratios against cKDTree, measured in this process.

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


# ---------------------------------------------------------------- the FAISS search stfeat used to run

_TIE_EXTRA = 8


def _tiled_candidates(x: np.ndarray, m: int, per_tile: int = 512) -> np.ndarray:
    """The ``m`` nearest points of every point (itself included) by flat FAISS searches per tile.

    Points are binned into square tiles holding ``per_tile`` points on average. A tile's points
    are searched against the points of the (2r+1) x (2r+1) tiles around it (r = 1 first). The
    result of a point is exact when its m-th distance is smaller than its distance to the edge of
    that window, since anything outside is farther; points for which the window proves nothing
    are searched again with r + 1, until the window covers every tile.
    """
    import faiss

    n = len(x)
    lo = x.min(axis=0)
    extent = np.maximum(x.max(axis=0) - lo, 1e-6)
    side = float(np.sqrt(extent[0] * extent[1] * per_tile / n)) or float(extent.max())
    side = max(side, float(extent.max()) / 4096)  # bounded number of tiles
    nx, ny = (np.floor(extent / side).astype(np.int64) + 1)
    tx = np.minimum(((x[:, 0] - lo[0]) / side).astype(np.int64), nx - 1)
    ty = np.minimum(((x[:, 1] - lo[1]) / side).astype(np.int64), ny - 1)
    tile = tx * ny + ty
    order = np.argsort(tile, kind="stable")
    starts = np.searchsorted(tile[order], np.arange(nx * ny + 1))

    def members(x0, x1, y0, y1):
        parts = [order[starts[i * ny + y0]:starts[i * ny + y1 + 1]] for i in range(x0, x1 + 1)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    out = np.empty((n, m), dtype=np.int64)
    todo = [(t, 1, order[starts[t]:starts[t + 1]]) for t in np.flatnonzero(np.diff(starts))]
    while todo:
        t, r, q = todo.pop()
        i, j = divmod(int(t), int(ny))
        x0, x1, y0, y1 = max(i - r, 0), min(i + r, nx - 1), max(j - r, 0), min(j + r, ny - 1)
        cand = members(x0, x1, y0, y1)
        whole = x0 == 0 and y0 == 0 and x1 == nx - 1 and y1 == ny - 1
        if len(cand) < m and not whole:
            todo.append((t, r + 1, q))
            continue
        index = faiss.IndexFlatL2(2)
        index.add(np.ascontiguousarray(x[cand]))
        d2, found = index.search(np.ascontiguousarray(x[q]), min(m, len(cand)))
        out[q] = cand[found]
        if whole:
            continue
        # distance from each query to the window's edge (an edge on the data's border is open)
        px, py = x[q, 0] - lo[0], x[q, 1] - lo[1]
        edge = np.full(len(q), np.inf)
        if x0 > 0:
            edge = np.minimum(edge, px - x0 * side)
        if x1 < nx - 1:
            edge = np.minimum(edge, (x1 + 1) * side - px)
        if y0 > 0:
            edge = np.minimum(edge, py - y0 * side)
        if y1 < ny - 1:
            edge = np.minimum(edge, (y1 + 1) * side - py)
        # a margin for float32 rounding of the squared distances
        unproven = np.sqrt(np.maximum(d2[:, -1], 0)) * (1 + 1e-4) + 1e-3 >= edge
        if unproven.any():
            todo.append((t, r + 1, q[unproven]))
    return out


def faiss_spatial_neighbors(coords_um: np.ndarray, k: int, *, tiled: bool) -> np.ndarray:
    """The former ``stfeat.neighbors.spatial_neighbors`` on the CPU (indices only)."""
    import faiss

    c = np.asarray(coords_um, dtype=np.float64)
    n = c.shape[0]
    kk = min(k, n - 1)
    m = min(kk + 1 + _TIE_EXTRA, n)
    x = np.ascontiguousarray((c - c.mean(axis=0)).astype(np.float32))
    if tiled:
        found = _tiled_candidates(x, m)
    else:
        index = faiss.IndexFlatL2(2)
        index.add(x)
        found = index.search(x, m)[1].astype(np.int64)
    d = np.linalg.norm(c[found] - c[:, None, :], axis=2)
    d[found == np.arange(n)[:, None]] = np.inf
    order = np.lexsort((found, d), axis=1)[:, :kk]
    return np.take_along_axis(found, order, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="20000,50000,100000,500000")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--flat-max", type=int, default=50_000)
    args = ap.parse_args()

    from stfeat.neighbors import spatial_neighbors

    spatial_neighbors(lattice(100), args.k)  # warm-up: scipy import
    for n in (int(s) for s in args.sizes.split(",")):
        c = lattice(n)
        t = time.perf_counter()
        idx, _ = spatial_neighbors(c, args.k)
        t_kd = time.perf_counter() - t
        t = time.perf_counter()
        idx_tiled = faiss_spatial_neighbors(c, args.k, tiled=True)
        t_tiled = time.perf_counter() - t
        line = (f"{len(c):>8d} spots, k={args.k}: cKDTree {t_kd:7.3f} s | FAISS tiled {t_tiled:7.2f} s "
                f"({t_tiled / t_kd:5.1f}x) identical {np.array_equal(idx, idx_tiled)}")
        if len(c) <= args.flat_max:
            t = time.perf_counter()
            idx_flat = faiss_spatial_neighbors(c, args.k, tiled=False)
            t_flat = time.perf_counter() - t
            line += (f" | FAISS flat {t_flat:7.2f} s ({t_flat / t_kd:5.1f}x) identical "
                     f"{np.array_equal(idx, idx_flat)}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
