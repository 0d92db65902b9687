"""Shared base class of the stage-two heads: input checks, sklearn tags, persistence hooks.

Every head is a scikit-learn regressor (``__init__`` stores its keyword arguments, ``fit`` learns
attributes ending in ``_`` and returns ``self``, ``predict`` checks it is fitted). On top of that each
head describes its fitted state as three plain parts, which :func:`stfeat.heads.save_head` writes
without pickle:

* ``meta``: a JSON-able dict of fitted scalars (chosen alpha, best iterations, layer sizes, ...);
* ``arrays``: named numpy arrays (coefficients, scalers, torch ``state_dict`` tensors), stored
  with safetensors;
* ``texts``: named strings (LightGBM model dumps), stored as text files.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

logger = logging.getLogger(__name__)


class BaseHead(RegressorMixin, BaseEstimator):
    """Base class of stfeat's heads (not used directly).

    Subclasses set ``name`` (the key in :data:`stfeat.heads.HEADS`), implement ``fit``/``predict``
    and the persistence hooks :meth:`_get_state` / :meth:`_set_state`.
    """

    name: str = "base"
    #: attribute whose presence marks the head as fitted (for ``check_is_fitted``)
    _fitted_attr: str = "n_features_in_"

    # ------------------------------------------------------------------ sklearn tags
    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # ------------------------------------------------------------------ input checks
    def _check_xy(self, X: Any, Y: Any, *, allow_nd: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Validate training data; remember whether ``Y`` was 1-D. Returns float32 X, float64 2-D Y."""
        from sklearn.utils.validation import check_array

        if Y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None. "
                             "Fix: pass the expression targets (spots x genes).")
        X = check_array(X, dtype=np.float32, allow_nd=allow_nd, ensure_min_samples=2,
                        input_name="X")
        Y = check_array(Y, dtype=np.float64, ensure_2d=False, input_name="Y")
        if Y.ndim not in (1, 2):
            raise ValueError(f"Y must be 1-D (n,) or 2-D (n, n_genes); got shape {Y.shape}. "
                             "Fix: pass one row per spot and one column per gene.")
        if len(Y) != len(X):
            raise ValueError(f"X has {len(X)} rows but Y has {len(Y)}: they must describe the same "
                             "spots in the same order. Fix: align X and Y by barcode before fit.")
        self._y_1d_ = Y.ndim == 1
        Y2 = Y.reshape(len(Y), -1)
        self.n_features_in_ = int(X.shape[-1]) if X.ndim > 2 else int(X.shape[1])
        self.n_outputs_ = int(Y2.shape[1])
        return X, Y2

    def _check_x(self, X: Any, *, allow_nd: bool = False) -> np.ndarray:
        """Validate prediction input against the fitted feature count; returns float32."""
        from sklearn.utils.validation import check_array, check_is_fitted

        check_is_fitted(self, self._fitted_attr)
        X = check_array(X, dtype=np.float32, allow_nd=allow_nd, input_name="X")
        d = X.shape[-1]
        if d != self.n_features_in_:
            raise ValueError(f"X has {d} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input. Fix: use the same encoder, scales "
                             "and feature layout as at fit time.")
        return X

    def _format_out(self, P: np.ndarray) -> np.ndarray:
        """Return predictions as (n,) when fit saw a 1-D Y, else (n, n_outputs)."""
        P = np.asarray(P)
        return P[:, 0] if getattr(self, "_y_1d_", False) else P

    # ------------------------------------------------------------------ persistence hooks
    def _get_state(self) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
        """Fitted state as (meta, arrays, texts); see the module docstring."""
        raise NotImplementedError

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray], texts: dict[str, str]) -> None:
        """Restore the fitted state written by :meth:`_get_state`."""
        raise NotImplementedError

    def _base_meta(self) -> dict:
        return {"n_features_in_": int(self.n_features_in_), "n_outputs_": int(self.n_outputs_),
                "_y_1d_": bool(getattr(self, "_y_1d_", False))}

    def _set_base_meta(self, meta: dict) -> None:
        self.n_features_in_ = int(meta["n_features_in_"])
        self.n_outputs_ = int(meta["n_outputs_"])
        self._y_1d_ = bool(meta.get("_y_1d_", False))

    def save(self, path) -> "Path":  # noqa: F821
        """Write the fitted head to the folder ``path`` without pickle (see :func:`save_head`)."""
        from stfeat.heads._persist import save_head

        return save_head(self, path)

    @classmethod
    def load(cls, path) -> "BaseHead":
        """Read a head written by :meth:`save`; raises ``InputError`` if it is another head type."""
        from stfeat.heads._persist import load_head

        head = load_head(path)
        if not isinstance(head, cls):
            from stfeat.errors import InputError

            raise InputError(path, f"holds a {type(head).__name__}, not a {cls.__name__}.",
                             f"load it with stfeat.heads.load_head or {type(head).__name__}.load.")
        return head


def standardize_fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler().fit(X)``'s ``mean_`` and ``scale_`` (float64), without float64 copies of X.

    Population variance accumulated in float64 by the corrected two-pass algorithm that
    scikit-learn's ``_incremental_mean_and_var`` uses, in row blocks to bound memory; features
    whose variance is within the rounding bound of a constant (scikit-learn's
    ``_is_constant_feature``) get scale 1.
    """
    if not isinstance(X, np.ndarray):  # a lazy view (stfeat.cache.LazyRows): one streaming pass
        return _standardize_fit_rows(X)
    n = X.shape[0]
    mean = X.mean(0, dtype=np.float64)
    ss = np.zeros(X.shape[1])
    corr = np.zeros(X.shape[1])
    step = max(1, 2**20 // max(1, X.shape[1]))  # 8 MB float64 blocks: cache-sized, no page-fault storm
    for i in range(0, n, step):
        t = X[i:i + step].astype(np.float64)
        t -= mean
        corr += t.sum(0)
        ss += np.einsum("ij,ij->j", t, t)
    var = (ss - corr ** 2 / n) / n
    return mean, _scale_of(mean, var, n)


def _scale_of(mean: np.ndarray, var: np.ndarray, n: int) -> np.ndarray:
    """The standard deviation, 1 for a feature whose variance is within the rounding bound of a constant
    (scikit-learn's ``_is_constant_feature``)."""
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.sqrt(np.maximum(var, 0.0))
    scale[constant] = 1.0
    return scale


class RowMoments:
    """Column means and sums of squared deviations of row blocks (float64): each block's two-pass moments,
    merged by Chan et al.'s pairwise update. :meth:`standardization` is :func:`standardize_fit`'s result."""

    def __init__(self, d: int) -> None:
        self.n, self.mean, self.m2 = 0, np.zeros(d), np.zeros(d)

    def add(self, X: np.ndarray) -> None:
        t = np.asarray(X, np.float64)
        nb = len(t)
        if nb == 0:
            return
        mb = t.mean(0)
        t = t - mb
        m2b = np.einsum("ij,ij->j", t, t) - t.sum(0) ** 2 / nb
        delta = mb - self.mean
        tot = self.n + nb
        self.mean = self.mean + delta * (nb / tot)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / tot)
        self.n = tot

    def standardization(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, _scale_of(self.mean, self.m2 / max(self.n, 1), self.n)


def _standardize_fit_rows(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`standardize_fit` of a row-sliceable array read in row blocks, in one pass (:class:`RowMoments`)."""
    n_all, d = int(X.shape[0]), int(X.shape[1])
    step = max(1, 2**23 // max(1, d))  # 64 MB float64 blocks
    mom = RowMoments(d)
    for a in range(0, n_all, step):
        b = min(n_all, a + step)
        mom.add(np.asarray(X.rows(a, b) if hasattr(X, "rows") else X[a:b], np.float32))
    return mom.standardization()


def inner_split(n: int, validation_fraction: float, random_state, groups=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of an inner (train, validation) split for early stopping.

    With ``groups`` (e.g. section or patient per spot) whole groups go to validation, which is
    what held-out-patient evaluation rewards; without them spots are split at random.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction}. "
                         "Fix: use e.g. 0.1 or 0.2.")
    rng = np.random.RandomState(random_state if not isinstance(random_state, np.random.RandomState)
                                else random_state.randint(2**31 - 1))
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} spots. Fix: pass one group "
                             "label (section or patient) per spot.")
        uniq = np.unique(groups)
        if len(uniq) >= 2:
            order = rng.permutation(len(uniq))
            n_val_groups = max(1, int(round(validation_fraction * len(uniq))))
            val_groups = uniq[order[:n_val_groups]]
            is_val = np.isin(groups, val_groups)
            return np.flatnonzero(~is_val), np.flatnonzero(is_val)
        logger.info("only one group given; inner validation split falls back to random spots")
    perm = rng.permutation(n)
    n_val = min(n - 1, max(1, int(round(validation_fraction * n))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
