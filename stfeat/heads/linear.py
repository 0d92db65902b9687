"""Linear heads: HEST-Benchmark's ridge probe (``hest-ridge``) and a fast cross-validated ridge (``ridge``)."""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead


logger = logging.getLogger(__name__)


class HestRidge(BaseHead):
    """HEST-Benchmark's linear probe: StandardScaler -> PCA(256) -> Ridge without intercept.

    Reproduces ``predict_single_split`` in mahmoodlab/HEST ``src/hest/bench/benchmark.py`` (the
    ``if args.dimreduce == 'PCA'`` block: ``Pipeline([('scaler', StandardScaler()),
    ('PCA', PCA(n_components=args.latent_dim, random_state=args.seed))])`` fitted on the training
    embeddings, then both splits cast to float32 by ``torch.Tensor``) followed by ``train_test_reg``
    in ``src/hest/bench/trainer.py`` (lines 11-19 at commit 0512f57: ``alpha = 100 /
    (X_train.shape[1] * y_train.shape[1])``, ``Ridge(solver='lsqr', alpha=alpha,
    random_state=random_state, fit_intercept=False, max_iter=1000)``), with the defaults of
    HEST's ``BenchmarkConfig`` (``dimreduce="PCA"``, ``latent_dim=256``, ``seed=1``).
    ``X_train.shape[1]`` there is the PCA dimension, so the default alpha is ``100 / (256 * n_genes)``.

    Where we differ, on purpose:

    * A user-given ``alpha`` is respected (HEST's ``train_test_reg`` overwrites its ``alpha``
      argument); ``alpha=None`` (default) applies HEST's rule.
    * ``n_components`` is capped at ``min(n_samples, n_features)`` when the training set is smaller
      than 256 in either dimension (HEST would raise); ``n_components=None`` skips the scaler and
      PCA, which is HEST's ``dimreduce=None`` mode (alpha then uses the raw feature count).
    * Nothing else. The scaler, PCA and ridge are HEST's, computed in one of two ways:

      - ``backend="stfeat"`` (default, fast): the same algorithms with the same inputs and
        random start, computed with fewer passes over the data (:mod:`stfeat.heads._pca`). The
        scaler is scikit-learn's bit for bit. PCA follows scikit-learn's ``svd_solver="auto"``
        policy; for its randomized SVD (HEST's case on > 1,000 features) the same Gaussian start
        (``RandomState(seed)``), oversampling, power iterations and LU normalisation run through
        the Gram matrix, which spans the same subspaces in exact arithmetic. The ridge runs
        scikit-learn's LSQR recurrence (``Ridge`` tol 1e-4) for all genes at once
        (:func:`stfeat.heads._lsqr.lsqr_multi`) on the PCA scores compressed by a QR, which
        leaves LSQR's iterates unchanged (:func:`~stfeat.heads._lsqr.lsqr_multi_compressed`).
        Agreement with scikit-learn's pipeline is at the level of LSQR's own rounding
        sensitivity: stopped early at tol 1e-4, float64 LSQR on PCA scores is not reproducible
        across implementations (on HER2ST, scikit-learn's ``Ridge`` and scipy's ``lsqr`` called
        directly on the same scores disagree on the iteration count of most genes and on
        per-gene r by up to 5e-4). Measured (``tests/test_heads_linear.py``,
        ``benchmarks/bench_heads.py``, HER2ST): mean Pearson r within 2e-5 of scikit-learn's.
      - ``backend="sklearn"``: HEST's code path line by line: scikit-learn's own
        ``StandardScaler``, ``PCA`` and ``Ridge`` objects (the PCA scores rounded to float32 as
        ``torch.Tensor`` does, then ``Ridge`` on their float64 copy, which is what scikit-learn
        makes of a torch tensor). Slow: ``Ridge``'s LSQR solves one gene at a time.

      ``predict`` applies the stored arrays with scikit-learn's formulas (no pickled sklearn
      objects). Without PCA and for solvers other than ``"lsqr"``, scikit-learn's ``Ridge``
      itself runs; ``"cholesky"`` is the exact ridge minimiser, which differs from HEST's
      numbers by LSQR's early stop (about 1% of the coefficients).

    Note what HEST's protocol implies: without an intercept and with PCA scores centred on the
    training data, predictions are centred near zero, so MSE/MAE are poor while Pearson r (HEST's
    metric) is unaffected. Set ``fit_intercept=True`` for calibrated predictions. HEST's targets are
    ``log1p`` of raw counts; stfeat's target transform is chosen by the caller.

    Parameters
    ----------
    n_components
        PCA dimension (HEST ``latent_dim``); ``None`` = no scaler and no PCA.
    alpha
        Ridge penalty; ``None`` = ``100 / (n_components_ * n_outputs)`` as in HEST.
    fit_intercept, solver, max_iter
        Passed to :class:`sklearn.linear_model.Ridge` (HEST: False, ``"lsqr"``, 1000).
    svd_solver
        Passed to :class:`sklearn.decomposition.PCA` (HEST: ``"auto"``).
    random_state
        Seed of PCA (randomized solver) and Ridge (HEST ``seed``, default 1).
    backend
        ``"stfeat"`` (default) or ``"sklearn"``: how the same protocol is computed (above).
    n_jobs
        BLAS threads (scikit-learn's convention); ``None`` = ``$STFEAT_CPU_THREADS`` or the
        cores of the process's CPU affinity (:func:`stfeat.heads._cpu.resolve_n_jobs`).

    Attributes
    ----------
    mean_, scale_ : ndarray (n_features,)
        Scaler statistics (absent when ``n_components=None``).
    pca_mean_ : ndarray (n_features,), components_ : ndarray (n_components_, n_features)
        Fitted PCA.
    coef_ : ndarray (n_outputs, n_components_), intercept_ : ndarray (n_outputs,)
        Fitted ridge on the PCA scores.
    alpha_ : float
        The penalty used. n_components_ : int, the PCA dimension used.
    pca_solver_ : str or None
        The PCA solver scikit-learn's policy chose (``"randomized+gram"`` when the default
        backend iterated through the Gram matrix).
    n_iter_ : ndarray (n_outputs,) or None
        LSQR iterations per gene.
    """

    name = "hest-ridge"
    _fitted_attr = "coef_"

    def __init__(self, n_components: int | None = 256, alpha: float | None = None, *,
                 fit_intercept: bool = False, solver: str = "lsqr", max_iter: int = 1000,
                 svd_solver: str = "auto", random_state: int | None = 1, backend: str = "stfeat",
                 n_jobs: int | None = None):
        self.n_components = n_components
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.max_iter = max_iter
        self.svd_solver = svd_solver
        self.random_state = random_state
        self.backend = backend
        self.n_jobs = n_jobs

    def _scores(self, X: np.ndarray) -> np.ndarray:
        if self.components_ is None:
            return X
        from stfeat.heads._pca import standard_scaler_transform

        Z = standard_scaler_transform(X, self.mean_, self.scale_)
        C = self.components_
        # as sklearn's PCA.transform: X @ C.T - mean @ C.T, then float32 (HEST's torch.Tensor)
        return (Z @ C.T - (self.pca_mean_ @ C.T).astype(np.float32)).astype(np.float32)

    def fit(self, X, Y) -> "HestRidge":
        """Fit scaler and PCA on ``X`` (n, d), then the ridge on the PCA scores to ``Y`` (n, g)."""
        from stfeat.heads._cpu import blas_threads, resolve_n_jobs, torch_threads

        if self.backend == "sklearn":
            with blas_threads(self.n_jobs):
                return self._fit(X, Y)
        # the Gram-matrix PCA multiplies with torch, whose threads threadpoolctl does not reach
        with blas_threads(self.n_jobs), torch_threads(resolve_n_jobs(self.n_jobs)):
            return self._fit(X, Y)

    def _fit(self, X, Y) -> "HestRidge":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        X, Y = self._check_xy(X, Y)
        n, d = X.shape
        if self.backend not in ("stfeat", "sklearn"):
            raise ValueError(f"backend must be 'stfeat' or 'sklearn'; got {self.backend!r}. Fix: "
                             "use 'stfeat' (fast, default) or 'sklearn' (HEST's own objects).")
        self.pca_solver_ = None
        if self.n_components is None:
            self.mean_ = self.scale_ = self.pca_mean_ = self.components_ = None
            T = X
        else:
            k = int(self.n_components)
            if k < 1:
                raise ValueError(f"n_components must be >= 1 or None; got {k}. Fix: use 256 (HEST).")
            if k > min(n, d):
                logger.info("hest-ridge: n_components=%d > min(n_samples=%d, n_features=%d); "
                            "using %d", k, n, d, min(n, d))
                k = min(n, d)
            if self.backend == "sklearn":
                pipe = Pipeline([("scaler", StandardScaler()),
                                 ("PCA", PCA(n_components=k, svd_solver=self.svd_solver,
                                             random_state=self.random_state))])
                # HEST: torch.Tensor(pipe.fit_transform(X_train)) -> float32 values
                T = pipe.fit_transform(X).astype(np.float32)
                scaler, pca = pipe.named_steps["scaler"], pipe.named_steps["PCA"]
                self.mean_, self.scale_ = scaler.mean_, scaler.scale_
                self.pca_mean_ = pca.mean_.astype(np.float32)
                self.components_ = pca.components_.astype(np.float32)
                self.explained_variance_ratio_ = pca.explained_variance_ratio_
                self.pca_solver_ = pca._fit_svd_solver
            else:
                from stfeat.heads._base import standardize_fit
                from stfeat.heads._pca import pca_fit_transform, standard_scaler_transform

                self.mean_, self.scale_ = standardize_fit(X)
                Z = standard_scaler_transform(X, self.mean_, self.scale_)
                res = pca_fit_transform(Z, k, self.random_state, self.svd_solver, overwrite=True)
                del Z
                T = res["scores"]
                self.pca_mean_ = res["mean"]
                self.components_ = res["components"]
                self.explained_variance_ratio_ = res["explained_variance_ratio"]
                self.pca_solver_ = res["solver"]
        self.n_components_ = int(T.shape[1])
        g = Y.shape[1]
        self.alpha_ = float(self.alpha) if self.alpha is not None else 100.0 / (T.shape[1] * g)
        # HEST passes torch tensors, which scikit-learn converts to float64: fit in float64 too
        T64 = T.astype(np.float64)
        self.n_iter_ = None
        if self.solver == "lsqr" and self.components_ is not None and self.backend == "stfeat":
            # scikit-learn's LSQR recurrence for all genes at once, on QR-compressed scores
            from stfeat.heads._lsqr import lsqr_multi_compressed

            x_off = T64.mean(0) if self.fit_intercept else np.zeros(T64.shape[1])
            y_off = Y.mean(0) if self.fit_intercept else np.zeros(g)
            W, self.n_iter_ = lsqr_multi_compressed(
                T64 - x_off, Y - y_off, damp=np.sqrt(self.alpha_), atol=1e-4, btol=1e-4,
                iter_lim=self.max_iter)
            self.coef_ = np.ascontiguousarray(W.T)
            self.intercept_ = y_off - x_off @ W
        else:
            reg = Ridge(alpha=self.alpha_, solver=self.solver, fit_intercept=self.fit_intercept,
                        max_iter=self.max_iter, random_state=self.random_state)
            reg.fit(T64, Y)
            if getattr(reg, "n_iter_", None) is not None:
                self.n_iter_ = np.atleast_1d(np.asarray(reg.n_iter_))
            self.coef_ = np.ascontiguousarray(np.atleast_2d(reg.coef_))
            self.intercept_ = np.broadcast_to(np.asarray(reg.intercept_, dtype=np.float64),
                                              (g,)).copy()
        logger.info("hest-ridge: %d spots, %d features -> %d PCs, alpha=%.3g", n, d,
                    self.n_components_, self.alpha_)
        return self

    def predict(self, X) -> np.ndarray:
        """Predict (n, g) from features (n, d)."""
        X = self._check_x(X)
        T = self._scores(X)
        P = T.astype(np.float64) @ self.coef_.T + self.intercept_
        return self._format_out(P)

    def _get_state(self):
        meta = self._base_meta() | {"alpha_": self.alpha_, "n_components_": self.n_components_}
        arrays = {"coef_": self.coef_, "intercept_": self.intercept_}
        if self.components_ is not None:
            arrays |= {"mean_": self.mean_, "scale_": self.scale_, "pca_mean_": self.pca_mean_,
                       "components_": self.components_}
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        self._set_base_meta(meta)
        self.alpha_ = float(meta["alpha_"])
        self.n_components_ = int(meta["n_components_"])
        for key in ("mean_", "scale_", "pca_mean_", "components_"):
            setattr(self, key, arrays.get(key))
        self.coef_ = arrays["coef_"]
        self.intercept_ = arrays["intercept_"]


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
        P = X @ self.coef_.T.astype(np.float32) + self.intercept_
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
