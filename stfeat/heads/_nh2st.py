"""Neighbour expression for the NH2ST mode of the attention head (its second contrastive loss)."""

from __future__ import annotations

import numpy as np


def neighbour_targets(Ys: np.ndarray, rel: np.ndarray, mask: np.ndarray, n_own: int,
                      coords_um: np.ndarray | None, sample_ids: np.ndarray | None,
                      allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean (standardised) expression of each spot's neighbour tokens that are training rows.

    A neighbour token of spot i sits at ``coords_um[i] + rel[i, t]``; the training row of the
    same sample at that position (within 1% of the offset's length) supplies its expression,
    if ``allowed`` (bool per row; default all) marks that row.
    Returns ``(Y_nb (n, g) float32, ok (n,) float32)``; ``ok`` is 0 where no neighbour was found
    (and everywhere without ``coords_um``: the neighbour loss is then skipped).
    """
    n, g = Ys.shape
    Y_nb = np.zeros((n, g), np.float32)
    ok = np.zeros(n, np.float32)
    if coords_um is None or rel.shape[1] <= n_own:
        return Y_nb, ok
    from scipy.spatial import cKDTree

    coords = np.asarray(coords_um, np.float64)
    sids = np.zeros(n, dtype=object) if sample_ids is None else np.asarray(sample_ids).astype(str)
    total = np.zeros((n, g))
    count = np.zeros(n)
    for s in np.unique(sids):
        rows = np.flatnonzero(sids == s)
        tree = cKDTree(coords[rows])
        for t in range(n_own, rel.shape[1]):
            v = rows[mask[rows, t]]
            if not len(v):
                continue
            off = rel[v, t].astype(np.float64)
            d, j = tree.query(coords[v] + off, k=1)
            hit = d <= 0.01 * np.linalg.norm(off, axis=1) + 1e-6
            if allowed is not None:
                hit &= np.asarray(allowed)[rows[j]]
            total[v[hit]] += Ys[rows[j[hit]]]
            count[v[hit]] += 1
    found = count > 0
    Y_nb[found] = (total[found] / count[found, None]).astype(np.float32)
    ok[found] = 1.0
    return Y_nb, ok
