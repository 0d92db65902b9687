"""Stacked ensemble of other heads (``ensemble``): non-negative weights chosen on out-of-fold predictions."""

from __future__ import annotations

import inspect
import logging

import numpy as np

from stfeat.heads._base import BaseHead

logger = logging.getLogger(__name__)


def _pearson_cols(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Pearson r per column (NaN where either column is constant)."""
    Yc, Pc = Y - Y.mean(0), P - P.mean(0)
    den = np.sqrt((Yc ** 2).sum(0) * (Pc ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (Yc * Pc).sum(0) / np.where(den > 0, den, 1.0), np.nan)


class EnsembleHead(BaseHead):
    """A stacked combination of other heads, weighted by their out-of-fold predictions.

    ``fit`` runs an inner cross-validation on the training spots: grouped k-fold
    (:class:`~sklearn.model_selection.GroupKFold`) over ``groups`` (patient or section per spot, which
    :func:`stfeat.crossval.cross_validate` passes) when there are at least 2 groups, so no group is on
    both sides of an inner fold; shuffled :class:`~sklearn.model_selection.KFold` over spots otherwise.
    Each base head is fitted on every inner training part (with that part's groups, for its own inner
    validation) and predicts the held-out part, giving out-of-fold (OOF) predictions. The weights are
    then non-negative least squares (:func:`scipy.optimize.nnls`) of the centred targets on the centred
    OOF predictions, per gene (``per_gene=True``) or one vector shared by all genes; the intercept is
    the target mean minus the weighted means of the predictions, so a base head's offset costs nothing.
    Weights are NOT normalised to sum to 1: a head that is right up to a scale gets its scale corrected,
    and a useless head gets weight ~0. Finally every base head is refitted on all spots; ``predict`` is
    ``intercept_ + sum_j weights_[j] * base_j(X)``.

    With too few spots for two inner folds of two spots each, no OOF predictions can be made: the
    weights are then equal (1 / n_heads) with intercept 0 (logged).

    Parameters
    ----------
    heads
        Names of the base heads (keys of :data:`stfeat.heads.HEADS` that take flat features; not
        ``ensemble`` itself). Default ridge + LightGBM + kNN: a linear, a tree and a retrieval head.
    head_params
        Base head name -> its parameters (e.g. ``{"lgbm": {"n_estimators": 200}}``).
    per_gene
        One weight vector per gene (True) or one shared by all genes (False: steadier with few spots).
    cv
        Number of inner folds (capped by the number of groups, or of spots // 2).
    random_state
        Seed of the shuffled KFold and ``random_state`` of the base heads that take one.
    n_jobs
        Passed to the base heads that take ``n_jobs`` (unless ``head_params`` sets it).

    Attributes
    ----------
    heads_ : list of str
        The base heads, in order.
    estimators_ : list of BaseHead
        The base heads refitted on all spots.
    weights_ : ndarray (n_heads, n_outputs)
        Non-negative weights (identical columns when ``per_gene=False``).
    intercept_ : ndarray (n_outputs,)
    base_scores_ : ndarray (n_heads, n_outputs)
        Out-of-fold Pearson r of each base head per gene (NaN: constant); ``base_scores_.mean(1)`` is the
        per-head summary for a report. ``oof_score_`` : ndarray (n_outputs,) the same for the ensemble.
    n_inner_folds_ : int
        Inner folds used (0 when the weights fell back to equal ones).
    """

    name = "ensemble"
    _fitted_attr = "weights_"

    def __init__(self, heads=("ridge", "lgbm", "knn"), *, head_params: dict | None = None, per_gene: bool = True,
                 cv: int = 3, random_state: int | None = 0, n_jobs: int | None = None):
        self.heads = heads
        self.head_params = head_params
        self.per_gene = per_gene
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ helpers
    def _names(self) -> list[str]:
        from stfeat.heads import HEADS

        names = [self.heads] if isinstance(self.heads, str) else list(self.heads or [])
        if not names or not all(isinstance(h, str) for h in names):
            raise ValueError(f"heads must be a non-empty list of head names; got {self.heads!r}. "
                             "Fix: e.g. heads=('ridge', 'lgbm', 'knn').")
        bad = [h for h in names if h not in HEADS or h == self.name]
        if bad:
            raise ValueError(f"unknown or unsupported base head(s) {bad}. Fix: use some of "
                             f"{sorted(set(HEADS) - {self.name})}.")
        if len(set(names)) != len(names):
            raise ValueError(f"heads lists a head twice: {names}. Fix: name each base head once.")
        extra = sorted(set(self.head_params or {}) - set(names))
        if extra:
            raise ValueError(f"head_params names head(s) {extra} that are not in heads {names}. "
                             "Fix: give parameters only for the base heads.")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise ValueError(f"cv must be an int >= 2; got {self.cv!r}. Fix: e.g. cv=3.")
        return names

    def _make(self, name: str):
        from stfeat.heads import HEADS, make_head

        params = dict((self.head_params or {}).get(name, {}))
        valid = HEADS[name]().get_params(deep=False)
        if "random_state" in valid:
            params.setdefault("random_state", self.random_state)
        if "n_jobs" in valid and self.n_jobs is not None:
            params.setdefault("n_jobs", self.n_jobs)
        est = make_head(name, **params)
        if "rel_pos" in inspect.signature(est.fit).parameters:
            raise ValueError(f"base head {name!r} takes token tensors, not flat features. Fix: combine flat "
                             "heads only (e.g. ridge, lgbm, knn, mlp, hest-ridge).")
        return est

    @staticmethod
    def _fit_one(est, X, Y, groups):
        if groups is not None and "groups" in inspect.signature(est.fit).parameters:
            return est.fit(X, Y, groups=groups)
        return est.fit(X, Y)

    @staticmethod
    def _predict_one(est, X) -> np.ndarray:
        P = np.asarray(est.predict(X), dtype=np.float64)
        return P.reshape(len(P), -1)

    def _splits(self, n: int, groups):
        from sklearn.model_selection import GroupKFold, KFold

        if groups is not None:
            n_groups = len(np.unique(groups))
            if n_groups >= 2:
                return list(GroupKFold(n_splits=min(int(self.cv), n_groups)).split(np.zeros(n), groups=groups))
            logger.info("ensemble: one group only; inner folds are random spots")
        k = min(int(self.cv), n // 2)
        if k < 2:
            return []
        return list(KFold(n_splits=k, shuffle=True, random_state=self.random_state).split(np.zeros(n)))

    @staticmethod
    def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
        from scipy.optimize import nnls

        if not np.any(A):
            return np.zeros(A.shape[1])
        return nnls(A, b)[0]

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X, Y, groups=None) -> "EnsembleHead":
        """Fit to features ``X`` (n, d) and targets ``Y`` (n, g); ``groups`` (n,) for the grouped inner CV."""
        names = self._names()
        X, Y = self._check_xy(X, Y)
        n, g = Y.shape
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != n:
                raise ValueError(f"groups has {len(groups)} entries for {n} spots. Fix: pass one group label "
                                 "(section or patient) per spot.")
        splits = self._splits(n, groups)
        m = len(names)
        oof = np.zeros((m, n, g))
        for tr, te in splits:
            gtr = None if groups is None else groups[tr]
            for j, name in enumerate(names):
                est = self._fit_one(self._make(name), X[tr], Y[tr], gtr)
                oof[j, te] = self._predict_one(est, X[te])
        if splits:
            y_mean, p_mean = Y.mean(0), oof.mean(1)  # (g,), (m, g)
            Yc, Pc = Y - y_mean, oof - p_mean[:, None, :]
            if self.per_gene:
                W = np.stack([self._nnls(Pc[:, :, c].T, Yc[:, c]) for c in range(g)], axis=1)
            else:
                w = self._nnls(Pc.transpose(2, 1, 0).reshape(g * n, m), Yc.T.reshape(-1))
                W = np.repeat(w[:, None], g, axis=1)
            intercept = y_mean - np.einsum("mg,mg->g", W, p_mean)
            self.base_scores_ = np.stack([_pearson_cols(Y, oof[j]) for j in range(m)])
            self.oof_score_ = _pearson_cols(Y, np.einsum("mng,mg->ng", oof, W) + intercept)
        else:
            logger.info("ensemble: %d spots are too few for inner folds; equal weights", n)
            W, intercept = np.full((m, g), 1.0 / m), np.zeros(g)
            self.base_scores_ = np.full((m, g), np.nan)
            self.oof_score_ = np.full(g, np.nan)
        self.n_inner_folds_ = len(splits)
        self.heads_ = names
        self.estimators_ = [self._fit_one(self._make(name), X, Y, groups) for name in names]
        self.weights_, self.intercept_ = W, intercept
        with np.errstate(invalid="ignore"):
            logger.info("ensemble: %d inner folds; mean weight %s; OOF r %s", len(splits),
                        dict(zip(names, np.round(W.mean(1), 3))),
                        dict(zip(names, np.round(np.nanmean(self.base_scores_, 1), 3)))
                        if splits else "n/a")
        return self

    def predict(self, X) -> np.ndarray:
        """Weighted sum of the base heads' predictions, (n, g)."""
        X = self._check_x(X)
        P = self.intercept_ + sum(self.weights_[j] * self._predict_one(est, X)
                                  for j, est in enumerate(self.estimators_))
        return self._format_out(P)

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        meta = self._base_meta() | {"heads_": list(self.heads_), "n_inner_folds_": int(self.n_inner_folds_)}
        arrays = {"weights_": self.weights_, "intercept_": self.intercept_, "base_scores_": self.base_scores_,
                  "oof_score_": self.oof_score_}
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self._set_base_meta(meta)
        self.heads_ = list(meta["heads_"])
        self.n_inner_folds_ = int(meta["n_inner_folds_"])
        for key in ("weights_", "intercept_", "base_scores_", "oof_score_"):
            setattr(self, key, np.asarray(arrays[key], np.float64))
        self.estimators_ = []  # restored by _set_children

    def _children(self) -> dict:
        """Sub-heads saved in their own folders (``heads/<i>_<name>``) by :func:`save_head`."""
        return {f"{j}_{name}": est for j, (name, est) in enumerate(zip(self.heads_, self.estimators_))}

    def _set_children(self, children: dict) -> None:
        from stfeat.errors import InputError

        if list(children) != [f"{j}_{name}" for j, name in enumerate(self.heads_)]:
            raise InputError(None, f"the saved ensemble's base heads {list(children)} do not match {self.heads_}.",
                             "save the ensemble again.")
        self.estimators_ = list(children.values())
