"""Nearest-neighbour graphs with FAISS: spatial (spot centres in um) and, for convenience, features.

FAISS is exact here (flat indexes): the neighbour-aware heads need the true neighbours. The GPU
index is used when the installed faiss has GPU support and a GPU is visible; faiss-cpu otherwise.
A flat search of every spot against every spot costs O(n^2) (73 s for 100,000 spots on 2 CPU
cores), so on the CPU large spatial graphs are searched tile by tile: each tile's spots against
the spots of the surrounding tiles, widened wherever that window cannot prove the result exact
(:func:`_tiled_candidates`). The neighbours are the same as the flat search's; ties are broken by
spot index in both.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _faiss_index(dim: int, *, metric: str = "l2", use_gpu: bool | None = None):
    # faiss logs every CPU-feature probe at INFO on import; keep that out of the user's console
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    want_gpu = use_gpu if use_gpu is not None else True
    if want_gpu and hasattr(faiss, "StandardGpuResources"):
        try:
            if faiss.get_num_gpus() > 0:
                res = faiss.StandardGpuResources()
                gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
                gpu_index._stfeat_res = res  # keep the resources alive with the index
                return gpu_index
        except (RuntimeError, AttributeError) as exc:  # a GPU build without a usable device
            log.debug("faiss GPU index unavailable (%s); using the CPU index", exc)
    if use_gpu:
        log.warning("faiss has no usable GPU here; using the CPU index")
    return index


_TILED_MIN = 20_000  # spots from which the CPU search goes tile by tile
_TIE_EXTRA = 8  # candidates beyond k+1, so that ties at the k-th distance are broken by index


def _tiled_candidates(x: np.ndarray, m: int, per_tile: int = 512) -> np.ndarray:
    """The ``m`` nearest points of every point (itself included) by flat FAISS searches per tile.

    Points are binned into square tiles holding ``per_tile`` points on average. A tile's points
    are searched against the points of the (2r+1) x (2r+1) tiles around it (r = 1 first). The
    result of a point is exact when its m-th distance is smaller than its distance to the edge of
    that window, since anything outside is farther; points for which the window proves nothing
    are searched again with r + 1, until the window covers every tile.
    """
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
        index = _faiss_index(2, use_gpu=False)
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


def spatial_neighbors(coords_um: np.ndarray, k: int = 8, *, use_gpu: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other spots of every spot.

    Parameters
    ----------
    coords_um
        (n, 2) spot centres in micrometres (level-0 px times um/px).
    k
        Neighbours per spot. With ``n <= k`` the missing columns hold index -1 and distance inf.
    use_gpu
        Force (True) or forbid (False) the FAISS GPU index; default: GPU when available.

    Returns
    -------
    idx
        (n, k) int64 neighbour indices, nearest first, self excluded.
    dist_um
        (n, k) float32 Euclidean distances in micrometres (computed in float64 from the
        coordinates, not from FAISS's float32 squared distances).
    """
    c = np.asarray(coords_um, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords_um must be (n, 2), got {c.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.isfinite(c).all():
        raise ValueError("coords_um holds NaN or inf values")
    n = c.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    dist = np.full((n, k), np.inf, dtype=np.float32)
    if n <= 1:
        return idx, dist
    kk = min(k, n - 1)
    m = min(kk + 1 + _TIE_EXTRA, n)
    # Centre before float32 so large slide coordinates keep their precision.
    x = np.ascontiguousarray((c - c.mean(axis=0)).astype(np.float32))
    index = _faiss_index(2, use_gpu=use_gpu)
    if n >= _TILED_MIN and not hasattr(index, "_stfeat_res"):  # CPU: tile by tile
        found = _tiled_candidates(x, m)
    else:
        index.add(x)
        found = index.search(x, m)[1].astype(np.int64)
    d = np.linalg.norm(c[found] - c[:, None, :], axis=2)
    d[found == np.arange(n)[:, None]] = np.inf  # never a spot itself (duplicates stay)
    # Sort by the exact float64 distances, ties by index, so float32 noise in FAISS never
    # reorders neighbours and the result does not depend on how the search was split.
    order = np.lexsort((found, d), axis=1)[:, :kk]
    idx[:, :kk] = np.take_along_axis(found, order, axis=1)
    dist[:, :kk] = np.take_along_axis(d, order, axis=1).astype(np.float32)
    return idx, dist


def feature_neighbors(features: np.ndarray, k: int = 8, *, metric: str = "cosine",
                      use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows in feature space (cosine similarity or Euclidean distance).

    Returns (idx (n, k) int64, score (n, k) float32): cosine similarity (higher is nearer) for
    ``metric="cosine"``, Euclidean distance for ``metric="l2"``.
    """
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got {x.shape}")
    if metric not in {"cosine", "l2"}:
        raise ValueError(f"metric must be 'cosine' or 'l2', not {metric!r}")
    n = x.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    score = np.full((n, k), -np.inf if metric == "cosine" else np.inf, dtype=np.float32)
    if n <= 1:
        return idx, score
    kk = min(k, n - 1)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = _faiss_index(x.shape[1], metric="ip" if metric == "cosine" else "l2", use_gpu=use_gpu)
    index.add(x)
    s, found = index.search(x, kk + 1)
    found = found.astype(np.int64)
    own = found == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    idx[:, :kk] = found[~own].reshape(n, kk)
    s = s[~own].reshape(n, kk)
    score[:, :kk] = s if metric == "cosine" else np.sqrt(np.maximum(s, 0))
    return idx, score


__all__ = ["spatial_neighbors", "feature_neighbors"]
