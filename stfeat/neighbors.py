"""Nearest-neighbour graphs: spatial (spot centres in um, scipy's k-d tree) and features (FAISS).

The spatial graph of 2-D spot centres is searched with :class:`scipy.spatial.cKDTree`: exact, and
faster than FAISS's flat or tiled searches at every size measured (``benchmarks/bench_neighbors.py``
compares them side by side). Ties are broken by spot index. In feature space (hundreds of
dimensions) FAISS's flat indexes are the right tool, on the GPU when available.
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


_TIE_EXTRA = 8  # candidates beyond k+1, so that ties at the k-th distance are usually in hand


def spatial_neighbors(coords_um: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other spots of every spot (exact; ties broken by spot index).

    Parameters
    ----------
    coords_um
        (n, 2) spot centres in micrometres (level-0 px times um/px).
    k
        Neighbours per spot. With ``n <= k`` the missing columns hold index -1 and distance inf.

    Returns
    -------
    idx
        (n, k) int64 neighbour indices, nearest first, self excluded (a duplicated position is
        a neighbour at distance 0).
    dist_um
        (n, k) float32 Euclidean distances in micrometres (computed in float64).
    """
    from scipy.spatial import cKDTree

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
    tree = cKDTree(c)
    found = tree.query(c, k=m)[1].reshape(n, m).astype(np.int64)
    # distances recomputed from the coordinates, as the tie-break fallback below does
    d = np.linalg.norm(c[found] - c[:, None, :], axis=2)
    d[found == np.arange(n)[:, None]] = np.inf  # never a spot itself (duplicates stay)
    order = np.lexsort((found, d), axis=1)[:, :kk]
    idx[:, :kk] = np.take_along_axis(found, order, axis=1)
    kth = np.take_along_axis(d, order[:, -1:], axis=1)[:, 0]
    dist[:, :kk] = np.take_along_axis(d, order, axis=1).astype(np.float32)
    # where the k-th neighbour ties with the farthest candidate, tied spots may lie beyond the
    # candidates: take every spot within that distance, so that ties go by index exactly
    if m < n:
        far = np.where(np.isinf(d), -np.inf, d).max(axis=1)
        for i in np.flatnonzero(kth >= far):
            ball = np.asarray(tree.query_ball_point(c[i], kth[i] * (1 + 1e-12) + 1e-12), np.int64)
            db = np.linalg.norm(c[ball] - c[i], axis=1)
            db[ball == i] = np.inf
            o = np.lexsort((ball, db))[:kk]
            idx[i, :kk], dist[i, :kk] = ball[o], db[o].astype(np.float32)
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
