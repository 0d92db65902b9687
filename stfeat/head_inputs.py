"""Head inputs of one sample: the flat vector (scales concatenated, optionally + the neighbours' mean) and the
token tensors (own scales + neighbours, one mask convention: True = padding). The one place they are built.

:func:`build_tokens` arranges plain arrays (not a cached sample) the way ``AttentionHead.fit`` takes them
directly (scikit-learn style: ``token_mask`` True = a valid token; :func:`stfeat.estimators.fit_estimator`
converts the pipeline's padding mask to it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

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
                   neighbor_scale: str | None = None, standardize: str = "none",
                   patch_tokens: bool = False) -> dict[str, np.ndarray]:
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

    With ``patch_tokens`` (M2OST's input, a cache extracted with ``--tokens G``) the G*G patch tokens of each scale
    (:func:`stfeat.patch_tokens.sample_tokens`) follow the own tokens, scale by scale, with token type S + i for
    scale i (neighbours then get 2S) and ``rel_pos`` the offset of the cell centre from the spot in micrometres.
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
    if not patch_tokens:
        return {"X": np.concatenate([own, nb], axis=1), "rel_pos": rel, "mask": mask, "token_type": token_type}
    from stfeat.errors import InputError
    from stfeat.patch_tokens import cell_offsets_um, sample_tokens

    toks, offs, types = [], [], []
    for i, s in enumerate(scales):
        t = sample_tokens(sf, s, standardize)
        if t.shape[-1] != own.shape[-1]:
            raise InputError(sf.source, f"its patch tokens at {s} um are {t.shape[-1]}-d but the pooled features "
                             f"{own.shape[-1]}-d (e.g. CLS + mean pooling).",
                             "use an encoder variant whose pooled vector has the token width (e.g. CLS pooling).")
        toks.append(t)
        offs.append(np.broadcast_to(cell_offsets_um(sf.token_grid, float(s))[None], (n, t.shape[1], 2)))
        types.append(np.full(t.shape[1], S + i))
    P = sum(t.shape[1] for t in toks)
    rel_all = np.zeros((n, S + P + k, 2), np.float32)
    rel_all[:, S:S + P] = np.concatenate(offs, axis=1)
    rel_all[:, S + P:] = rel[:, S:]
    mask_all = np.zeros((n, S + P + k), bool)
    mask_all[:, S + P:] = mask[:, S:]
    types_all = np.concatenate([np.arange(S), *types, np.full(k, 2 * S)]).astype(np.int64)
    return {"X": np.concatenate([own, *toks, nb], axis=1), "rel_pos": rel_all, "mask": mask_all,
            "token_type": types_all}


def token_rows(sf: SampleFeatures, scales: Sequence[str], start: int, stop: int, *, k: int = 8,
               neighbor_scale: str | None = None, standardize: str = "none") -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of :func:`token_features`, reading only those rows and their neighbours' rows (sorted,
    unique: what HDF5 point selection needs) from a lazy sample. Under ``standardize="slide"`` the rows are
    standardised with the sample's statistics over all its spots (:meth:`SampleFeatures.standardizer`)."""
    from stfeat.standardize import apply_inplace

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
            apply_inplace(X[:, i], std[s])
    idx, _ = sf.neighbor_graph(k)
    idx = np.asarray(idx[a:b])
    valid = idx >= 0
    if k and valid.any():
        uniq, inv = np.unique(idx[valid], return_inverse=True)
        got = np.asarray(sf.features[nscale][uniq], np.float32)  # a lazy view reads just these rows
        if std is not None:
            apply_inplace(got, std[nscale])
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


def build_tokens(features: Mapping[str, np.ndarray] | Sequence[np.ndarray], coords_um: np.ndarray,
                 neighbors: np.ndarray | None = None, *, neighbor_scales: Sequence[int] = (0,)
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrange one sample's cached features as attention tokens.

    Parameters
    ----------
    features
        Per-scale features of the sample's spots, ``{scale: (n, d)}`` in scale order (or a list);
        all scales must share ``d``.
    coords_um
        Spot centres in micrometres, (n, 2) (level-0 px times um/px).
    neighbors
        (n, k) indices of each spot's spatial neighbours within the same sample (the FAISS graph
        of the cache); -1 marks a missing neighbour. ``None`` = no neighbour tokens.
    neighbor_scales
        Which scales (positions in ``features``) to include for each neighbour.

    Returns
    -------
    X : ndarray (n, T, d) float32
        Tokens: the S own scales first, then for each neighbour its ``neighbor_scales``.
    rel_pos : ndarray (n, T, 2) float32
        Neighbour offset in um (0 for own tokens and missing neighbours).
    token_type : ndarray (T,) int64
        Own token at scale s -> s; neighbour token at scale s -> S + s.
    token_mask : ndarray (n, T) bool
        False for missing neighbours (their tokens are zeros).
    """
    feats = list(features.values()) if isinstance(features, Mapping) else list(features)
    S = len(feats)
    n, d = feats[0].shape
    if any(f.shape != (n, d) for f in feats):
        raise ValueError("all scales must have the same (n_spots, n_features) shape; got "
                         f"{[f.shape for f in feats]}. Fix: use one encoder's cache for all scales.")
    coords = np.asarray(coords_um, dtype=np.float64)
    k = 0 if neighbors is None else neighbors.shape[1]
    ns = list(neighbor_scales) if k else []
    T = S + k * len(ns)
    X = np.zeros((n, T, d), dtype=np.float32)
    rel = np.zeros((n, T, 2), dtype=np.float32)
    mask = np.ones((n, T), dtype=bool)
    types = np.empty(T, dtype=np.int64)
    for s in range(S):
        X[:, s] = feats[s]
        types[s] = s
    t = S
    for j in range(k):
        nb = np.asarray(neighbors[:, j], dtype=np.int64)
        ok = nb >= 0
        safe = np.where(ok, nb, 0)
        off = np.where(ok[:, None], coords[safe] - coords, 0.0)
        for s in ns:
            X[:, t] = np.where(ok[:, None], feats[s][safe], 0.0)
            rel[:, t] = off
            mask[:, t] = ok
            types[t] = S + s
            t += 1
    return X, rel, types, mask
