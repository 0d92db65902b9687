"""Per-spot uncertainty: split-conformal prediction intervals from an inner cross-validation.

For each outer fold, the head is refitted on a few inner folds of the fold's TRAINING spots only (grouped
by patient, else by section; with a single training section, by spatial blocks with a buffer, see
:mod:`stfeat.blocks`). The held-out absolute residuals of those inner fits calibrate, per gene, the
half-width ``q`` of the interval ``prediction +- q``: the ``ceil((n + 1) * coverage) / n`` empirical
quantile of the n calibration residuals (the finite-sample correction of split conformal prediction).
Nothing about the outer test spots is used. The empirical coverage on the outer test spots is reported
per fold and per gene, with the mean interval width. Coverage is guaranteed only for test spots exchangeable
with the calibration spots: across patients (a shift the inner folds of one training patient cannot see) it
can fall short, which is what the measured coverage is for (HER2ST C vs A, classical features, ridge: 0.73
for nominal 0.9; within A1 by blocks: 0.92).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

N_INNER = 3
CONFORMAL_NOTE = ("conformal intervals: prediction +- q per gene, q = the finite-sample corrected quantile of "
                  "held-out absolute residuals of an inner CV ({n} folds, grouped by patient/section, or "
                  "spatial blocks within a single training section) on each outer fold's training spots; "
                  "nominal coverage {c:g}. The guarantee holds for test spots exchangeable with the calibration "
                  "spots; for a new patient (or from within-section calibration) coverage can fall short: read the "
                  "measured coverage per fold")


def check_coverage(coverage: float | None) -> float | None:
    """None (or 0) = off; else a number in (0, 1)."""
    if coverage is None or coverage == 0:
        return None
    c = float(coverage)
    if not 0 < c < 1:
        raise InputError(None, f"conformal coverage {coverage!r} is not between 0 and 1.",
                         "give e.g. 0.9 (90% intervals), or None / 0 to turn conformal intervals off.")
    return c


def take_rows(inputs: dict, rows: np.ndarray) -> dict:
    """The model inputs of some rows (``token_type`` is per position, not per row, and is kept whole)."""
    return {k: (v if k == "token_type" else v[rows]) for k, v in inputs.items()}


def conformal_quantile(residuals: np.ndarray, coverage: float) -> np.ndarray:
    """Per column, the ``ceil((n + 1) coverage) / n`` quantile of absolute residuals (inf if n is too small)."""
    r = np.abs(np.asarray(residuals, np.float64))
    n = len(r)
    level = np.ceil((n + 1) * coverage) / max(n, 1)
    if n == 0 or level > 1:
        return np.full(r.shape[1], np.inf)
    return np.quantile(r, level, axis=0, method="higher")


def inner_folds(groups: np.ndarray, sample_of_row: np.ndarray, coords_um: np.ndarray, n_inner: int = N_INNER,
                seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(train rows, calibration rows) of the inner folds and how they were made."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups, dtype=object)
    uniq = list(dict.fromkeys(groups.tolist()))
    if len(uniq) >= 2:
        k = min(n_inner, len(uniq))
        idx = np.arange(len(groups))
        return [(tr, te) for tr, te in GroupKFold(n_splits=k).split(idx, groups=groups)], f"{k} grouped folds"
    from stfeat.blocks import block_masks

    # one group: spatial blocks within each training section (one section in practice)
    out = []
    per = {}
    for s in dict.fromkeys(np.asarray(sample_of_row).tolist()):
        rows = np.flatnonzero(np.asarray(sample_of_row) == s)
        per[s] = (rows, block_masks(coords_um[rows], n_inner, seed)[0])
    for b in range(n_inner):
        tr = np.concatenate([rows[m[b][0]] for rows, m in per.values()])
        te = np.concatenate([rows[m[b][1]] for rows, m in per.values()])
        out.append((tr, te))
    return out, f"{n_inner} spatial blocks"


def calibrate(make_est: Callable[[], Any], fit: Callable, predict: Callable, inputs: dict, Y: np.ndarray,
              groups: np.ndarray, sample_of_row: np.ndarray, coords_um: np.ndarray, coverage: float, *,
              n_inner: int = N_INNER, seed: int = 0) -> tuple[np.ndarray, str]:
    """Half-width per gene from the inner CV on the training rows only; and a description of the inner folds."""
    folds, how = inner_folds(groups, sample_of_row, coords_um, n_inner, seed)
    res = []
    for tr, te in folds:
        if len(tr) == 0 or len(te) == 0:
            continue
        est = make_est()
        fit(est, take_rows(inputs, tr), Y[tr], np.asarray(groups)[tr])
        res.append(Y[te] - predict(est, take_rows(inputs, te)))
    if not res:
        return np.full(Y.shape[1], np.inf), how
    return conformal_quantile(np.concatenate(res), coverage), how


def coverage_of(Y: np.ndarray, P: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per gene, the fraction of spots whose measured value lies in ``P +- q``."""
    return (np.abs(np.asarray(Y, np.float64) - P) <= q[None, :]).mean(axis=0)
