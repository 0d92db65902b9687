"""The spatial neighbour graph of spot centres (um): scipy's k-d tree, exact, ties by spot index.

:class:`scipy.spatial.cKDTree` is faster than the FAISS flat and tiled searches stfeat used before
at every size measured (``benchmarks/bench_neighbors.py`` runs them side by side); FAISS stays the
tool in feature space (the ``knn`` head's index, :mod:`stfeat.heads.knn`).
"""

from __future__ import annotations

import numpy as np


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


__all__ = ["spatial_neighbors"]
