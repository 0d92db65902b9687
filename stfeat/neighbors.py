"""Nearest-neighbour graphs with FAISS: spatial (spot centres in um) and, for convenience, features.

FAISS is exact here (flat indexes): the graphs are small (thousands to a few hundred thousand
spots) and the neighbour-aware heads need the true neighbours. The GPU index is used when the
installed faiss has GPU support and a GPU is visible; faiss-cpu otherwise.
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


def _drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own index from its k+1 results (or the last one when self is absent,
    which happens only when more than k+1 points share a position)."""
    n = idx.shape[0]
    own = idx == np.arange(n)[:, None]
    has_self = own.any(axis=1)
    own[~has_self, -1] = True
    keep = ~own
    # exactly one entry dropped per row, so every row keeps k entries in their original order
    return idx[keep].reshape(n, k)


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
    # Centre before float32 so large slide coordinates keep their precision.
    x = np.ascontiguousarray((c - c.mean(axis=0)).astype(np.float32))
    index = _faiss_index(2, use_gpu=use_gpu)
    index.add(x)
    _, found = index.search(x, kk + 1)
    found = _drop_self(found.astype(np.int64), kk)
    d = np.linalg.norm(c[found] - c[:, None, :], axis=2)
    # Re-sort by the exact distances (stable on ties, then by index) so float32 noise in FAISS
    # never reorders neighbours.
    order = np.lexsort((found, d), axis=1)
    found = np.take_along_axis(found, order, axis=1)
    d = np.take_along_axis(d, order, axis=1)
    idx[:, :kk] = found
    dist[:, :kk] = d.astype(np.float32)
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
