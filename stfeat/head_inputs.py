"""Head inputs of one sample: the flat vector (scales concatenated, optionally + the neighbours' mean) and the
token tensors (own scales + neighbours, one mask convention: True = padding). The one place they are built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from stfeat.features import scale_name

if TYPE_CHECKING:  # pragma: no cover
    from stfeat.features import SampleFeatures


def flat_features(sf: SampleFeatures, scales: Sequence[str], *, neighbor_mean: bool = False, k: int = 8,
                  standardize: str = "none") -> np.ndarray:
    """Concatenated scales of one sample (standardised per slide under ``standardize="slide"``), optionally
    + the mean of the same over k neighbours."""
    feats = sf.standardized(scales, standardize)
    X = np.concatenate([feats[s] for s in scales], axis=1)
    if not neighbor_mean:
        return X
    import scipy.sparse as sp

    idx, _ = sf.neighbor_graph(k)
    valid = idx >= 0
    rows = np.repeat(np.arange(len(idx)), valid.sum(axis=1))
    w = (1.0 / np.maximum(valid.sum(axis=1), 1)).astype(np.float32)[rows]
    # row-normalised adjacency times X: memory O(n * D), one pass (no (n, k, D) gather)
    A = sp.csr_matrix((w, (rows, idx[valid])), shape=(len(idx), len(idx)))
    return np.concatenate([X, np.asarray(A @ X, dtype=np.float32)], axis=1)


def token_features(sf: SampleFeatures, scales: Sequence[str], *, k: int = 8,
                   neighbor_scale: str | None = None, standardize: str = "none") -> dict[str, np.ndarray]:
    """Tokens of one sample for the attention head.

    Returns
    -------
    dict
        ``X`` (n, S + k, d) float32: the spot's own features at each of the S scales, then its k
        neighbours' features at ``neighbor_scale`` (default: the smallest scale); ``rel_pos``
        (n, S + k, 2) float32 offsets in micrometres (0 for own tokens, neighbour - spot for the others);
        ``mask`` (n, S + k) bool, True where a neighbour token is padding; ``token_type`` (S + k,) int64:
        0..S-1 for the own scales, S for neighbours. Under ``standardize="slide"`` every scale is first
        standardised with the sample's statistics over its spots (per scale).
    """
    scales = list(scales)
    nscale = scale_name(neighbor_scale) if neighbor_scale is not None else min(scales, key=float)
    if nscale not in sf.features:
        raise ValueError(f"neighbour scale {nscale} um is not among the loaded scales {scales}")
    n, S = sf.n_spots, len(scales)
    feats = sf.standardized(scales + [nscale], standardize)
    own = np.stack([feats[s] for s in scales], axis=1)
    idx, _ = sf.neighbor_graph(k)
    valid = idx >= 0
    safe = np.clip(idx, 0, None)
    nb = feats[nscale][safe] * valid[..., None]
    cu = sf.coords_um
    rel = np.zeros((n, S + k, 2), np.float32)
    rel[:, S:] = np.where(valid[..., None], cu[safe] - cu[:, None, :], 0.0)
    mask = np.zeros((n, S + k), bool)
    mask[:, S:] = ~valid
    token_type = np.concatenate([np.arange(S), np.full(k, S)]).astype(np.int64)
    return {"X": np.concatenate([own, nb], axis=1), "rel_pos": rel, "mask": mask, "token_type": token_type}


def token_rows(sf: SampleFeatures, scales: Sequence[str], start: int, stop: int, *, k: int = 8,
               neighbor_scale: str | None = None, standardize: str = "none") -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of :func:`token_features`, reading only those rows and their neighbours' rows (sorted,
    unique: what HDF5 point selection needs) from a lazy sample. Under ``standardize="slide"`` the rows are
    standardised with the sample's statistics over all its spots (:meth:`SampleFeatures.standardizer`)."""
    from stfeat.features import _standardize_inplace

    scales = list(scales)
    nscale = scale_name(neighbor_scale) if neighbor_scale is not None else min(scales, key=float)
    if nscale not in sf.features:
        raise ValueError(f"neighbour scale {nscale} um is not among the loaded scales {scales}")
    std = sf.standardizer(scales + [nscale], standardize)
    a, b = max(0, int(start)), min(sf.n_spots, int(stop))
    m, S = max(0, b - a), len(scales)
    d = sf.features[scales[0]].shape[1]
    X = np.zeros((m, S + k, d), np.float32)
    for i, s in enumerate(scales):
        v = sf.features[s]
        X[:, i] = v.rows(a, b) if hasattr(v, "rows") else v[a:b]
        if std is not None:
            _standardize_inplace(X[:, i], std[s])
    idx, _ = sf.neighbor_graph(k)
    idx = np.asarray(idx[a:b])
    valid = idx >= 0
    if k and valid.any():
        uniq, inv = np.unique(idx[valid], return_inverse=True)
        got = np.asarray(sf.features[nscale][uniq], np.float32)  # a lazy view reads just these rows
        if std is not None:
            _standardize_inplace(got, std[nscale])
        nb = np.zeros((m, k, d), np.float32)
        nb[valid] = got[inv.ravel()]
        X[:, S:] = nb
    safe = np.clip(idx, 0, None)
    cu = sf.coords_um
    rel = np.zeros((m, S + k, 2), np.float32)
    rel[:, S:] = np.where(valid[..., None], cu[safe] - cu[a:b, None, :], 0.0)
    mask = np.zeros((m, S + k), bool)
    mask[:, S:] = ~valid
    token_type = np.concatenate([np.arange(S), np.full(k, S)]).astype(np.int64)
    return {"X": X, "rel_pos": rel, "mask": mask, "token_type": token_type}
