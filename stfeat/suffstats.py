"""Ridge from per-sample sufficient statistics: stage two at Visium HD scale.

For features ``x`` (d) and targets ``y`` (g) of a set of spots, ridge with an intercept, standardised
features, the penalty chosen by GCV or grouped k-fold, and its predictions depend on the data only
through ``n``, ``sum x``, ``sum x x^T``, ``sum y``, ``sum y^2`` (per gene) and ``sum x y^T``
(:class:`SuffStats`). These add over spots, so

* each sample's statistics are computed once, streaming row chunks of its (lazy) features
  (:func:`sample_stats`), by any job, and summed in any order (:func:`combine`);
* a fold's training statistics are the total minus the held-out groups', and its held-out error for
  every penalty follows from the held-out groups' statistics: one d x d eigendecomposition per fold,
  no pass over the data;
* :func:`solve` returns a fitted :class:`stfeat.heads.ridge.RidgeCVHead` with the predictions and the
  penalty that ``RidgeCVHead.fit`` on the same rows and groups gives (same grid, same folds), in float64.

Statistics are kept about a shift (the first chunk's mean) so that centring never cancels digits;
chunk products run in float32 (``precision="float32"``, BLAS ``ssyrk``/``sgemm``, summed into
float64 accumulators) or float64. :mod:`stfeat.suffstats_cache` keeps them beside the feature caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from stfeat.errors import InputError

_FIELDS = ("n", "shift", "sx", "sxx", "sy", "syy", "sxy")


@dataclass
class SuffStats:
    """Sums over spots about a shift ``c``: ``sx = sum(x - c)``, ``sxx = sum (x - c)(x - c)^T``,
    ``sy = sum y``, ``syy = sum y^2`` (per gene), ``sxy = sum (x - c) y^T``; all float64."""

    n: float
    shift: np.ndarray
    sx: np.ndarray
    sxx: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.sx.shape[0])

    @property
    def n_targets(self) -> int:
        return int(self.sy.shape[0])

    def shifted(self, c: np.ndarray) -> "SuffStats":
        """The same sums about another shift ``c``."""
        c = np.asarray(c, np.float64)
        delta = self.shift - c  # x - c = (x - shift) + delta
        sx = self.sx + self.n * delta
        sxx = self.sxx + np.outer(self.sx, delta) + np.outer(delta, self.sx) + self.n * np.outer(delta, delta)
        return SuffStats(self.n, c.copy(), sx, sxx, self.sy.copy(), self.syy.copy(),
                         self.sxy + np.outer(delta, self.sy))

    def _check_same(self, other: "SuffStats") -> None:
        if (self.n_features, self.n_targets) != (other.n_features, other.n_targets):
            raise InputError(None, f"statistics of {self.n_features} features x {self.n_targets} genes and of "
                             f"{other.n_features} x {other.n_targets} cannot be combined.",
                             "compute every sample's statistics with the same scales, layout and genes.")

    def __add__(self, other: "SuffStats") -> "SuffStats":
        self._check_same(other)
        o = other.shifted(self.shift)
        return SuffStats(self.n + o.n, self.shift.copy(), self.sx + o.sx, self.sxx + o.sxx, self.sy + o.sy,
                         self.syy + o.syy, self.sxy + o.sxy)

    def __sub__(self, other: "SuffStats") -> "SuffStats":
        self._check_same(other)
        o = other.shifted(self.shift)
        return SuffStats(self.n - o.n, self.shift.copy(), self.sx - o.sx, self.sxx - o.sxx, self.sy - o.sy,
                         self.syy - o.syy, self.sxy - o.sxy)

    def genes(self, cols: Sequence[int] | np.ndarray) -> "SuffStats":
        """The statistics of a subset of the target columns (a gene subset needs no new pass)."""
        cols = np.asarray(cols, dtype=np.int64)
        return SuffStats(self.n, self.shift, self.sx, self.sxx, self.sy[cols], self.syy[cols], self.sxy[:, cols])

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x mean, sum (x - xm)(x - xm)^T, sum (x - xm)(y - ym)^T, y mean, sum (y - ym)^2)."""
        n = float(self.n)
        zbar = self.sx / n
        ym = self.sy / n
        G = self.sxx - np.outer(self.sx, zbar)
        C = self.sxy - np.outer(self.sx, ym)
        return self.shift + zbar, G, C, ym, self.syy - n * ym * ym

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k), np.float64) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> "SuffStats":
        return cls(float(np.asarray(a["n"])), *(np.asarray(a[k], np.float64) for k in _FIELDS[1:]))


def sample_stats(chunks: Iterable[tuple[np.ndarray, np.ndarray]] | None = None, *, X: Any = None, Y: Any = None,
                 chunk_rows: int = 8192, precision: str = "float32", n_jobs: int | None = None) -> SuffStats:
    """Sufficient statistics of rows given as ``(X chunk, Y chunk)`` pairs, or as whole ``X``, ``Y``.

    ``X`` (n, d) and ``Y`` (n, g) may be any row-sliceable arrays (``Y`` may also be 1-D).
    ``precision``: dtype of the chunk products (sums are always float64). ``n_jobs``: BLAS threads.
    """
    from stfeat.heads._cpu import blas_threads

    with blas_threads(n_jobs):
        return _sample_stats(chunks, X=X, Y=Y, chunk_rows=chunk_rows, precision=precision)


def _sample_stats(chunks, *, X, Y, chunk_rows, precision) -> SuffStats:
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64'; got {precision!r}")
    if chunks is None:
        if X is None or Y is None:
            raise ValueError("give chunks, or X and Y")
        if len(X) != len(Y):
            raise InputError(None, f"X has {len(X)} rows but Y has {len(Y)}.", "pass one target row per spot.")
        chunks = ((X[i:i + chunk_rows], Y[i:i + chunk_rows]) for i in range(0, len(X), chunk_rows))
    from scipy.linalg.blas import dgemm, dsyrk, sgemm, ssyrk

    syrk, gemm = (ssyrk, sgemm) if precision == "float32" else (dsyrk, dgemm)
    dt = np.dtype(precision)
    acc = zbuf = None
    for Xc, Yc in chunks:
        Xc = np.asarray(Xc, dtype=dt)
        Yc = np.asarray(Yc, dtype=dt).reshape(len(Xc), -1)
        if len(Xc) == 0:
            continue
        if not (np.isfinite(Xc).all() and np.isfinite(Yc).all()):
            raise InputError(None, "features or targets hold NaN or infinite values.",
                             "re-extract the features / check the counts of that sample.")
        if acc is None:
            shift = Xc.mean(0, dtype=np.float64).astype(dt)
            d, g = Xc.shape[1], Yc.shape[1]
            acc = dict(n=0.0, sx=np.zeros(d), sxx=np.zeros((d, d)), sy=np.zeros(g), syy=np.zeros(g),
                       sxy=np.zeros((d, g)))
        if zbuf is None or len(zbuf) < len(Xc):
            zbuf = np.empty(Xc.shape, dtype=dt)
        Z = np.subtract(Xc, shift, out=zbuf[:len(Xc)])  # one reused buffer: no fresh pages per chunk
        acc["n"] += len(Z)
        acc["sx"] += Z.sum(0, dtype=np.float64)
        # Z.T of a C-ordered (m, d) array is Fortran-ordered (d, m): no copy
        acc["sxx"] += syrk(1.0, Z.T, trans=0, lower=1)
        acc["sxy"] += gemm(1.0, Z.T, Yc)
        acc["sy"] += Yc.sum(0, dtype=np.float64)
        acc["syy"] += np.einsum("ij,ij->j", Yc, Yc, dtype=np.float64)
    if acc is None:
        raise InputError(None, "no rows to compute statistics from.", "give at least one spot.")
    sxx = acc["sxx"]
    sxx = np.tril(sxx) + np.tril(sxx, -1).T  # syrk filled the lower triangle
    return SuffStats(acc["n"], shift.astype(np.float64), acc["sx"], sxx, acc["sy"], acc["syy"], acc["sxy"])


def combine(stats: Iterable[SuffStats]) -> SuffStats:
    """The sum of several sets of statistics (e.g. samples computed by different jobs), in any order."""
    stats = list(stats)
    if not stats:
        raise ValueError("combine needs at least one SuffStats")
    out = stats[0]
    for s in stats[1:]:
        out = out + s
    return out


# ------------------------------------------------------------------------------------------ solving
def _scale(G: np.ndarray, n: float, standardize: bool) -> np.ndarray:
    """RidgeCVHead._scale on the centred Gram matrix's diagonal."""
    if not standardize:
        return np.ones(G.shape[0])
    s = np.sqrt(np.maximum(np.diag(G) / n, 0.0))
    s[s < 10 * np.finfo(np.float64).eps] = 1.0
    return s


def _eigh(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh

    s, V = eigh(G, overwrite_a=False, check_finite=False, driver="evd")
    return np.clip(s, 0.0, None), V


def _folds(groups: Mapping[str, SuffStats], k: int) -> list[list[str]]:
    """The held-out groups of each fold, as scikit-learn's GroupKFold assigns them to the same rows."""
    from sklearn.model_selection import GroupKFold

    labels = np.array(sorted(groups), dtype=object)
    counts = np.array([int(round(groups[g].n)) for g in labels])
    rows = np.repeat(np.arange(len(labels)), counts)  # codes in np.unique order: GroupKFold's own
    return [list(labels[np.unique(rows[te])]) for _, te in
            GroupKFold(n_splits=min(k, len(labels))).split(np.zeros((len(rows), 1)), groups=rows)]


def n_folds(head: Any, n_groups: int) -> int | None:
    """Folds RidgeCVHead would use with ``n_groups`` groups (None = GCV); mirrors ``RidgeCVHead._n_folds``."""
    cv = head.cv
    if cv in (None, "gcv"):
        return None
    if cv == "auto":
        return min(5, n_groups) if n_groups >= 3 else None
    if isinstance(cv, str) or int(cv) < 2:
        raise ValueError(f"cv must be 'auto', 'gcv', None or an int >= 2; got {cv!r}.")
    if n_groups < 2:
        raise ValueError(f"grouped CV needs at least 2 groups; got {n_groups}. Fix: pass section or patient "
                         "labels, or use cv=None (GCV).")
    return int(cv)


def solve(groups: Mapping[str, SuffStats] | SuffStats, head: Any = None, *, alphas: Any = None):
    """Fit ridge from statistics: a fitted :class:`stfeat.heads.ridge.RidgeCVHead` (see :func:`_solve`);
    BLAS runs on the head's ``n_jobs`` threads (:func:`stfeat.heads._cpu.blas_threads`)."""
    from stfeat.heads._cpu import blas_threads
    from stfeat.heads.ridge import RidgeCVHead

    head = RidgeCVHead() if head is None else head
    with blas_threads(head.n_jobs):
        return _solve(groups, head, alphas=alphas)


def _solve(groups: Mapping[str, SuffStats] | SuffStats, head: Any, *, alphas: Any = None):
    """Fit ridge from statistics: a fitted :class:`stfeat.heads.ridge.RidgeCVHead`.

    Parameters
    ----------
    groups
        Group label (patient or section) -> its statistics; one :class:`SuffStats` = one group (GCV).
    head
        An unfitted ``RidgeCVHead`` whose parameters (``alphas``, ``cv``, ``alpha_per_target``,
        ``standardize``) are used; default ``RidgeCVHead()``. ``cv`` as an int needs groups (folds hold
        whole groups; shuffled k-fold over spots is not available from statistics).
    """
    from stfeat.heads.ridge import _default_alphas

    if isinstance(groups, SuffStats):
        groups = {"all": groups}
    if alphas is not None:
        head.set_params(alphas=alphas)
    total = combine(groups[g] for g in sorted(groups))
    n, d, g = float(total.n), total.n_features, total.n_targets
    if n < 2:
        raise InputError(None, f"ridge needs at least 2 spots; the statistics hold {n:g}.", "give more spots.")
    grid = np.asarray(_default_alphas(n) if head.alphas is None else head.alphas, float)
    if grid.ndim != 1 or len(grid) == 0 or np.any(grid <= 0):
        raise ValueError(f"alphas must be a non-empty 1-D list of positive penalties; got {head.alphas!r}. "
                         "Fix: e.g. alphas=[1, 10, 100, 1000].")
    mean, G, C, ym, yy = total.centred()
    scale = _scale(G, n, head.standardize)
    Gs = G / np.outer(scale, scale)
    Cs = C / scale[:, None]
    var = np.maximum(yy / n, 1e-12)
    k = None if len(grid) == 1 else n_folds(head, len(groups))
    eig = None
    if len(grid) == 1:
        scores = np.full((1, g), np.nan)
    elif k is None:
        eig = _eigh(Gs)
        scores = _gcv(eig, Cs, yy, n, grid)
    else:
        scores = _grouped_cv(groups, total, scale, grid, k) / n
    scores = scores / var
    if len(grid) == 1:
        best = np.zeros(g, dtype=int)
        alpha = float(grid[0])
    elif head.alpha_per_target:
        best = scores.argmin(0)
        alpha = grid[best]
    else:
        best = np.full(g, scores.mean(1).argmin())
        alpha = float(grid[best[0]])
    W = np.empty((d, g))
    for b in np.unique(best):
        cols = np.flatnonzero(best == b)
        if eig is not None:
            s, V = eig
            W[:, cols] = V @ ((V.T @ Cs[:, cols]) / (s + grid[b])[:, None])
        else:
            W[:, cols] = _chol_solve(Gs, Cs[:, cols], grid[b])
    head.alphas_, head.cv_scores_, head.alpha_ = grid, scores, alpha
    head.coef_ = W.T / scale[None, :]
    head.intercept_ = ym - head.coef_ @ mean
    head.n_features_in_, head.n_outputs_, head._y_1d_ = d, g, False
    return head


def _chol_solve(Gs: np.ndarray, B: np.ndarray, a: float) -> np.ndarray:
    from scipy.linalg import cho_factor, cho_solve

    A = Gs.copy(order="F")
    A.flat[::A.shape[0] + 1] += float(a)
    return cho_solve(cho_factor(A, lower=True, overwrite_a=True, check_finite=False), B, check_finite=False)


def _gcv(eig, Cs, yy, n, grid) -> np.ndarray:
    """GCV per (alpha, gene), as RidgeCVHead._gcv_scores (primal form)."""
    s, V = eig
    Ct = V.T @ Cs
    out = np.empty((len(grid), Cs.shape[1]))
    for i, a in enumerate(grid):
        Z = Ct / (s + a)[:, None]
        rss = yy - np.einsum("ij,ij->j", Ct, Z) - a * np.einsum("ij,ij->j", Z, Z)
        df = float(np.sum(s / (s + a))) + 1.0
        out[i] = np.maximum(rss, 0.0) / n / max(1.0 - df / n, 1e-6) ** 2
    return out


def _grouped_cv(groups: Mapping[str, SuffStats], total: SuffStats, scale: np.ndarray, grid, k: int) -> np.ndarray:
    """Held-out squared error per (alpha, gene), summed over grouped folds (RidgeCVHead._cv_scores)."""
    sse = np.zeros((len(grid), total.n_targets))
    for held in _folds(groups, k):
        te = combine(groups[h] for h in held)
        tr = total - te
        mtr, Gtr, Ctr, ytr, _ = tr.centred()
        mte, Gte, Cte, yte, yyte = te.centred()
        s, V = _eigh(Gtr / np.outer(scale, scale))
        # held-out rows centred by the TRAINING means (as the head predicts them)
        dm, dy, nte = (mte - mtr) / scale, yte - ytr, float(te.n)
        H = Gte / np.outer(scale, scale) + nte * np.outer(dm, dm)
        Cuv = Cte / scale[:, None] + nte * np.outer(dm, dy)
        vv = yyte + nte * dy * dy
        Ht = V.T @ H @ V
        Bt = V.T @ (Ctr / scale[:, None])
        Pt = V.T @ Cuv
        for i, a in enumerate(grid):
            Z = Bt / (s + a)[:, None]
            sse[i] += vv - 2 * np.einsum("ij,ij->j", Pt, Z) + np.einsum("ij,ij->j", Z, Ht @ Z)
    return sse


__all__ = ["SuffStats", "sample_stats", "combine", "solve", "n_folds"]
