"""Fast cross-validated ridge (``ridge``): one tridiagonalisation serves every penalty and gene."""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead

logger = logging.getLogger(__name__)


def _centred_gram(X: np.ndarray, mean: np.ndarray, Y: np.ndarray, chunk: int = 2048):
    """Lower triangle of ``(X - mean)^T (X - mean)`` (Fortran order) and ``(X - mean)^T Y``.

    Row blocks are centred into one reused buffer and accumulated with BLAS ``syrk``/``gemm``, so
    no centred copy of ``X`` is allocated (a fresh 100+ MB array costs more in page faults than
    the subtraction itself).
    """
    from scipy.linalg.blas import sgemm, ssyrk

    n, d = X.shape
    G = np.zeros((d, d), dtype=np.float32, order="F")
    C = np.zeros((d, Y.shape[1]), dtype=np.float32, order="F")
    buf = np.empty((min(chunk, n), d), dtype=np.float32)
    for i in range(0, n, chunk):
        b = buf[:min(chunk, n - i)]
        np.subtract(X[i:i + chunk], mean, out=b)
        # b.T is Fortran-ordered (d, m): C-ordered b needs no copy
        G = ssyrk(1.0, b.T, beta=1.0, c=G, trans=0, lower=1, overwrite_c=1)
        C = sgemm(1.0, b.T, Y[i:i + chunk], beta=1.0, c=C, overwrite_c=1)
    return G, C


def _default_alphas(n: int) -> np.ndarray:
    # penalties relative to the data size: on standardised features the mean eigenvalue of X^T X
    # is n, so alpha = n * r spans from almost no shrinkage (r=1e-3) to very strong (r=1e4)
    return n * np.logspace(-3, 4, 15)


class RidgeCVHead(BaseHead):
    """Standardise features, then multi-output ridge with the penalty chosen by cross-validation.

    One Householder tridiagonalisation ``Q T Q^T`` of the centred Gram matrix ``X^T X`` (or of
    ``X X^T`` when there are fewer spots than features) serves every penalty and every gene: each
    penalty is then a tridiagonal solve, and the traces come from the eigenvalues of ``T``
    (:mod:`stfeat.heads._tridiag`), so the whole grid costs little more than a single ridge fit
    and less than an eigendecomposition. Without groups the criterion is generalised
    cross-validation (GCV, Golub et al. 1979), a rotation-invariant form of leave-one-out.
    Neighbouring spots are near duplicates, so leave-one-spot-out under-regularises for new
    patients (on HER2ST it chose a 3x smaller penalty and lost 0.02 in mean Pearson r); so when
    ``groups`` (section or patient per spot) reach ``fit`` with 3 or more distinct values, the
    default ``cv="auto"`` uses grouped k-fold (k = min(5, n_groups); one reduction per fold)
    instead. The Gram matrix and its reduction are float32, the solves float64.

    Parameters
    ----------
    alphas
        Candidate penalties for ``||Y - XW||^2 + alpha ||W||^2`` on standardised ``X``;
        ``None`` = ``n_samples * logspace(-3, 4, 15)``.
    alpha_per_target
        Choose a penalty per gene (True) or one shared penalty minimising the mean of each gene's
        variance-normalised error (False, default: more stable on small data).
    cv
        ``"auto"`` = grouped k-fold when ``fit`` gets ``groups`` with >= 3 groups, else GCV;
        ``None`` or ``"gcv"`` = always GCV; an int k = grouped k-fold over ``groups`` when given
        (``GroupKFold``), else shuffled k-fold over spots.
    standardize
        Scale features to unit variance before the penalty (centring is always done).
    random_state
        Seed of the shuffled k-fold (only used when ``cv`` is an int and no groups are given).
    n_jobs
        BLAS and torch CPU threads (scikit-learn's convention); ``None`` = ``$STFEAT_CPU_THREADS``
        or the cores of the process's CPU affinity (:func:`stfeat.heads._cpu.resolve_n_jobs`).

    Attributes
    ----------
    alpha_ : float or ndarray (n_outputs,)
        Chosen penalty (per gene when ``alpha_per_target``).
    cv_scores_ : ndarray (n_alphas, n_outputs)
        Cross-validated MSE of every candidate, per gene, divided by the gene's variance.
    alphas_ : ndarray
        The candidate grid used.
    coef_ : ndarray (n_outputs, n_features), intercept_ : ndarray (n_outputs,)
        Coefficients on raw features: ``predict(X) = X @ coef_.T + intercept_``.
    """

    name = "ridge"
    _fitted_attr = "coef_"

    def __init__(self, alphas=None, *, alpha_per_target: bool = False, cv: int | str | None = "auto",
                 standardize: bool = True, random_state: int | None = 0, n_jobs: int | None = None):
        self.alphas = alphas
        self.alpha_per_target = alpha_per_target
        self.cv = cv
        self.standardize = standardize
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- linear algebra helpers ----------------------------------------------------------------
    @staticmethod
    def _decompose(Xt):
        """Tridiagonalise the Gram matrix of centred ``Xt`` (n, d): ``X^T X`` when n >= d
        ("primal"), else ``X X^T`` ("dual"). Returns (kind, TridiagonalSolver)."""
        from scipy.linalg.blas import ssyrk

        from stfeat.heads._tridiag import TridiagonalSolver

        A = np.ascontiguousarray(Xt.numpy() if hasattr(Xt, "numpy") else Xt, dtype=np.float32)
        n, d = A.shape
        # A.T of a C-ordered (n, d) array is Fortran-ordered (d, n): no copy; syrk gives the
        # lower triangle of A^T A (trans=1) or A A^T (trans=0) with half a matrix product's flops
        kind = "primal" if n >= d else "dual"
        G = ssyrk(1.0, A.T, trans=int(kind == "dual"), lower=1)
        return kind, TridiagonalSolver(G, overwrite=True)

    def _decompose_rhs(self, Xt, Yt):
        """(kind, solver, Q^T B) with B = X^T Y (primal) or Y (dual), float64."""
        kind, ts = self._decompose(Xt)
        B = (Xt.T @ Yt).numpy() if kind == "primal" else Yt.numpy()
        return kind, ts, ts.rotate(B).astype(np.float64)

    def _scale(self, var: np.ndarray) -> np.ndarray:
        """Feature standard deviations from their (population) variances; 1 when not standardising
        or for constant features."""
        if not self.standardize:
            return np.ones_like(var)
        scale = np.sqrt(np.maximum(var, 0.0))
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
        return scale

    def fit(self, X, Y, groups=None) -> "RidgeCVHead":
        """Fit to features ``X`` (n, d) and targets ``Y`` (n, g); ``groups`` (n,) for grouped CV."""
        from stfeat.heads._cpu import blas_threads, resolve_n_jobs, torch_threads

        # torch's matrix products run on its own (MKL/OpenMP) threads, which threadpoolctl
        # does not reach
        with blas_threads(self.n_jobs), torch_threads(resolve_n_jobs(self.n_jobs)):
            return self._fit(X, Y, groups)

    def _fit(self, X, Y, groups=None) -> "RidgeCVHead":
        import torch

        X, Y = self._check_xy(X, Y)
        n, d = X.shape
        alphas = np.asarray(_default_alphas(n) if self.alphas is None else self.alphas, float)
        if alphas.ndim != 1 or len(alphas) == 0 or np.any(alphas <= 0):
            raise ValueError(f"alphas must be a non-empty 1-D list of positive penalties; got "
                             f"{self.alphas!r}. Fix: e.g. alphas=[1, 10, 100, 1000].")
        self.alphas_ = alphas
        # centre in float32 around the float64 mean; no float64 copy of X is made
        mean = X.mean(0, dtype=np.float64)
        y_mean = Y.mean(0)
        Yc = Y - y_mean
        Yt = torch.from_numpy(Yc.astype(np.float32))
        var = np.maximum(Yc.var(0), 1e-12)
        n_folds = None if len(alphas) == 1 else self._n_folds(groups)
        if n_folds is None and n >= d:
            # primal: standardise the Gram matrix (d x d) instead of X (n x d); its diagonal holds
            # the column sums of squares, which give the standard deviations
            from stfeat.heads._tridiag import TridiagonalSolver

            G, C = _centred_gram(X, mean.astype(np.float32), Yt.numpy())
            scale = self._scale(np.diag(G).astype(np.float64) / n)
            inv = (1.0 / scale).astype(np.float32)
            G *= inv[:, None]
            G *= inv[None, :]
            C *= inv[:, None]
            ts = TridiagonalSolver(G, overwrite=True)
            dec = ("primal", ts, ts.rotate(C).astype(np.float64))
            Xt = None
        else:
            Xc = X - mean.astype(np.float32)
            scale = self._scale(np.einsum("ij,ij->j", Xc, Xc).astype(np.float64) / n)
            Xt = torch.from_numpy(Xc)
            Xt /= torch.from_numpy(scale.astype(np.float32))
            dec = self._decompose_rhs(Xt, Yt) if n_folds is None else None

        if len(alphas) == 1:  # nothing to choose
            scores = np.full((1, Y.shape[1]), np.nan)
        elif n_folds is None:
            scores = self._gcv_scores(dec, (Yc ** 2).sum(0), n, alphas)
        else:
            scores = self._cv_scores(Xt, Yt, Y, alphas, groups)
        scores = scores / var
        self.cv_scores_ = scores
        if len(alphas) == 1:
            best = np.zeros(Y.shape[1], dtype=int)
            self.alpha_ = float(alphas[0])
        elif self.alpha_per_target:
            best = scores.argmin(0)
            self.alpha_ = alphas[best]
        else:
            best = np.full(Y.shape[1], scores.mean(1).argmin())
            self.alpha_ = float(alphas[best[0]])
        if len(alphas) > 1 and (np.any(best == 0) or np.any(best == len(alphas) - 1)):
            logger.info("ridge: chosen alpha at the edge of the grid [%.3g, %.3g]; consider "
                        "widening alphas", alphas[0], alphas[-1])
        W = self._solve(Xt, Yt, alphas, best, dec)
        coef_std = W.T  # (g, d) on standardised features
        self.coef_ = coef_std / scale[None, :]
        self.intercept_ = y_mean - self.coef_ @ mean
        logger.info("ridge: %d spots x %d features -> %d genes, alpha=%s", n, d, Y.shape[1],
                    np.array2string(np.atleast_1d(self.alpha_)[:5], precision=3))
        return self

    def _n_folds(self, groups) -> int | None:
        """Number of CV folds, or None for GCV."""
        if self.cv in (None, "gcv"):
            return None
        if self.cv == "auto":
            if groups is None:
                return None
            n_groups = len(np.unique(np.asarray(groups)))
            return min(5, n_groups) if n_groups >= 3 else None
        if isinstance(self.cv, str) or int(self.cv) < 2:
            raise ValueError(f"cv must be 'auto', 'gcv', None or an int >= 2; got {self.cv!r}.")
        return int(self.cv)

    @staticmethod
    def _gcv_scores(dec, yy, n, alphas):
        """GCV score per (alpha, gene): RSS/n / (1 - (df+1)/n)^2 (the +1 is the intercept).

        Primal (n >= d), with ``G = X^T X = Q T Q^T``, ``C = X^T Y`` and ``Z = (T + aI)^{-1} Q^T C``:
        ``RSS = |Y|^2 - <Q^T C, Z> - a |Z|^2``. Dual (n < d), with ``K = X X^T = Q T Q^T``: the
        residual is ``a (K + aI)^{-1} Y``, so ``RSS = a^2 |(T + aI)^{-1} Q^T Y|^2``. In both,
        ``df = sum s / (s + a)`` over the eigenvalues ``s`` of ``T``. Each penalty costs one
        tridiagonal solve, O(d * g).
        """
        kind, ts, Bt = dec
        scores = np.empty((len(alphas), Bt.shape[1]))
        for i, a in enumerate(alphas):
            Z = ts.solve_rotated(a, Bt)
            if kind == "primal":
                rss = yy - np.einsum("ij,ij->j", Bt, Z) - a * np.einsum("ij,ij->j", Z, Z)
            else:
                rss = a * a * np.einsum("ij,ij->j", Z, Z)
            df = ts.trace_hat(a) + 1.0
            denom = max(1.0 - df / n, 1e-6) ** 2
            scores[i] = np.maximum(rss, 0.0) / n / denom
        return scores

    def _solve(self, Xt, Yt, alphas, best, dec) -> np.ndarray:
        """Coefficients (d, g) on standardised features for the chosen alpha(s)."""
        import torch

        if dec is None and Xt.shape[0] >= Xt.shape[1]:
            # the penalty was chosen by k-fold CV: a Cholesky solve per chosen penalty (float64)
            # is cheaper than a tridiagonalisation of the full Gram matrix
            from scipy.linalg import cho_factor, cho_solve
            from scipy.linalg.blas import ssyrk

            A = np.ascontiguousarray(Xt.numpy())
            G = ssyrk(1.0, A.T, trans=0, lower=1).astype(np.float64)
            C = (Xt.T @ Yt).double().numpy()
            W = np.empty((A.shape[1], Yt.shape[1]))
            for b in np.unique(best):
                cols = np.flatnonzero(best == b)
                Ga = G.copy(order="F")
                Ga.flat[::A.shape[1] + 1] += float(alphas[b])
                W[:, cols] = cho_solve(cho_factor(Ga, lower=True, overwrite_a=True,
                                                  check_finite=False), C[:, cols],
                                       check_finite=False)
            return W
        kind, ts, Bt = self._decompose_rhs(Xt, Yt) if dec is None else dec
        W = np.empty((Bt.shape[0] if kind == "primal" else Xt.shape[1], Yt.shape[1]))
        for b in np.unique(best):
            cols = np.flatnonzero(best == b)
            Z = ts.solve_rotated(float(alphas[b]), Bt[:, cols])
            V = ts.unrotate(Z.astype(np.float32))
            if kind == "primal":
                W[:, cols] = V
            else:  # W = X^T (K + aI)^{-1} Y
                W[:, cols] = (Xt.T @ torch.from_numpy(V)).double().numpy()
        return W

    def _cv_scores(self, Xt, Yt, Y, alphas, groups) -> np.ndarray:
        """Mean squared error of every alpha on k held-out folds (grouped when groups given)."""
        import torch
        from sklearn.model_selection import GroupKFold, KFold

        n, d = Xt.shape
        k = self._n_folds(groups)
        if groups is not None:
            groups = np.asarray(groups)
            n_groups = len(np.unique(groups))
            if n_groups < 2:
                raise ValueError(f"grouped CV needs at least 2 groups; got {n_groups}. Fix: pass "
                                 "section or patient labels, or use cv=None (GCV).")
            splits = GroupKFold(n_splits=min(k, n_groups)).split(np.zeros(n), groups=groups)
        else:
            splits = KFold(n_splits=k, shuffle=True, random_state=self.random_state).split(
                np.zeros(n))
        sse = np.zeros((len(alphas), Y.shape[1]))
        for tr, te in splits:
            tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
            Xtr, Ytr = Xt[tr_t], Yt[tr_t]  # fresh copies: centre them in place
            mx, my = Xtr.mean(0), Ytr.mean(0)
            Xtr -= mx
            Ytr -= my
            Xte = Xt[te_t] - mx
            Yte = (Yt[te_t] - my).double().numpy()
            kind, ts = self._decompose(Xtr)
            if kind == "primal":  # pred = Xte (G + aI)^{-1} Xtr^T Ytr = (Xte Q) Z
                Bt = ts.rotate((Xtr.T @ Ytr).numpy())
                P = ts.rotate(Xte.T.numpy()).T
            else:  # pred = Xte Xtr^T (K + aI)^{-1} Ytr = (Xte Xtr^T Q) Z
                Bt = ts.rotate(Ytr.numpy())
                P = ts.rotate((Xtr @ Xte.T).numpy()).T
            Bt = Bt.astype(np.float64)
            P = torch.from_numpy(np.ascontiguousarray(P))
            for i, a in enumerate(alphas):
                Z = torch.from_numpy(ts.solve_rotated(float(a), Bt).astype(np.float32))
                pred = (P @ Z).double().numpy()
                sse[i] += ((Yte - pred) ** 2).sum(0)
        return sse / n

    def predict(self, X) -> np.ndarray:
        """Predict (n, g) from features (n, d)."""
        X = self._check_x(X)
        # float64: a float32 GEMM's rounding depends on where a row falls in the BLAS blocks, so the same
        # spot would get (slightly) different predictions in a different batch
        P = X.astype(np.float64) @ np.ascontiguousarray(self.coef_, np.float64).T + self.intercept_
        return self._format_out(P)

    def _get_state(self):
        meta = self._base_meta() | {"alpha_": np.atleast_1d(self.alpha_).tolist(),
                                    "alpha_scalar": np.isscalar(self.alpha_)}
        arrays = {"coef_": self.coef_, "intercept_": self.intercept_, "alphas_": self.alphas_,
                  "cv_scores_": self.cv_scores_}
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self._set_base_meta(meta)
        a = np.asarray(meta["alpha_"], float)
        self.alpha_ = float(a[0]) if meta["alpha_scalar"] else a
        for key in ("coef_", "intercept_", "alphas_", "cv_scores_"):
            setattr(self, key, arrays[key])
