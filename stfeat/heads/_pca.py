"""scikit-learn's ``StandardScaler`` + ``PCA`` (the HEST-Benchmark probe's front end), computed faster.

HEST-Benchmark fits ``Pipeline([StandardScaler(), PCA(n_components=256, random_state=seed)])``. On
10,000 spots x 3,072 features scikit-learn spends about 1 s in the scaler (float64 temporaries of
the whole matrix) and about 3 s in PCA, whose ``svd_solver="auto"`` picks the randomized SVD
(Halko et al. 2011) with 7 power iterations: 16 passes over the data. This module runs the same
algorithm with the same random start and returns the same result to float32 rounding:

* scaler: :func:`stfeat.heads._base.standardize_fit` (float64 statistics and scikit-learn's rule
  for constant features) and the same float32 subtract-then-divide (equal bit for bit);
* PCA: the same solver choice as scikit-learn's ``"auto"``. For the randomized solver, the same
  Gaussian test matrix (``RandomState(seed).normal``, cast to float32), oversampling (10), number
  of power iterations (7 or 4) and LU normalisation, but each power iteration multiplies by the
  Gram matrix ``A^T A`` (computed once, by BLAS ``syrk``) instead of by ``A`` and then ``A^T``.
  The iterates span the same subspaces (``(A^T A)^q Omega``) in exact arithmetic, then the final
  range basis ``qr(A M)``, projection ``B = Q^T A``, SVD of ``B`` and sign rule (``svd_flip``,
  ``u_based_decision=False``) are scikit-learn's. When multiplying by ``A`` directly is cheaper
  (fewer samples than features), and for the other solvers, scikit-learn's own PCA runs.

``tests/test_heads_linear.py`` checks the scores, components and the probe's predictions against
scikit-learn's pipeline.
"""

from __future__ import annotations

import numpy as np


def standard_scaler_transform(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``StandardScaler.transform`` on float32 ``X``, bit for bit: on a float32 copy,
    ``X -= float32(mean); X /= float32(scale)``, as scikit-learn (>= 1.5) does."""
    Z = np.array(X, dtype=np.float32, copy=True)
    Z -= np.asarray(mean).astype(np.float32)
    Z /= np.asarray(scale).astype(np.float32)
    return Z


def _auto_solver(n: int, d: int, k: int) -> str:
    """scikit-learn's (>= 1.5) ``svd_solver="auto"`` policy for dense input."""
    if d <= 1_000 and n >= 10 * d:
        return "covariance_eigh"
    if max(n, d) <= 500:
        return "full"
    if 1 <= k < 0.8 * min(n, d):
        return "randomized"
    return "full"


def _lu_normalize(M: np.ndarray) -> np.ndarray:
    from scipy import linalg

    return linalg.lu(M, permute_l=True, check_finite=False)[0]


def pca_fit_transform(Z: np.ndarray, n_components: int, random_state: int | None,
                      svd_solver: str = "auto", *, overwrite: bool = False) -> dict:
    """``PCA(n_components, svd_solver, random_state).fit_transform(Z)`` for float32 ``Z``.

    Returns a dict with ``scores`` (n, k) float32 (``fit_transform``'s output), ``mean``
    (d,) float32, ``components`` (k, d) float32, ``explained_variance_ratio`` (k,) and ``solver``
    (the solver scikit-learn's policy chose, with ``"+gram"`` when the Gram-matrix iteration ran).
    ``overwrite=True`` lets it centre ``Z`` in place.
    """
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    n, d = Z.shape
    k = int(n_components)
    solver = _auto_solver(n, d, k) if svd_solver == "auto" else svd_solver
    if solver != "randomized" or n < d:
        return _sklearn_pca(Z, k, random_state, solver)
    return _randomized_gram(Z, k, random_state, overwrite)


def _randomized_gram(Z: np.ndarray, k: int, random_state, overwrite: bool) -> dict:
    import torch
    from scipy import linalg
    from scipy.linalg.blas import ssymm, ssyrk

    from stfeat.heads._cpu import blas_threads

    n, d = Z.shape

    rng = np.random.RandomState(random_state) if not isinstance(
        random_state, np.random.RandomState) else random_state
    r = k + 10  # scikit-learn's n_oversamples
    n_iter = 7 if k < 0.1 * min(n, d) else 4
    mean = Z.mean(axis=0)  # float32, as scikit-learn's xp.mean
    if overwrite:
        Z -= mean
        A = Z
    else:
        A = Z - mean
    # range finder on A (not transposed since n >= d): Omega is (d, r), float32
    M = rng.normal(size=(d, r)).astype(np.float32, copy=False)
    # the factorisations (LU, QR, SVD of thin matrices) run with the head's n_jobs threads
    # (stfeat.heads._cpu); inside a head's fit the whole computation already runs under it
    G = ssyrk(1.0, A.T, trans=0, lower=1)  # lower triangle of A^T A, Fortran-ordered
    for _ in range(n_iter):
        M = ssymm(1.0, G, M, side=0, lower=1)  # (A^T A) M from the lower triangle
        if n_iter > 2:
            with blas_threads():
                M = _lu_normalize(M)
    At = torch.from_numpy(A)
    AM = (At @ torch.from_numpy(np.ascontiguousarray(M, dtype=np.float32))).numpy()
    with blas_threads():
        Q = linalg.qr(AM, mode="economic", check_finite=False, overwrite_a=True)[0]
    B = (torch.from_numpy(np.ascontiguousarray(Q.T)) @ At).numpy()
    with blas_threads():
        Uhat, s, Vt = linalg.svd(B, full_matrices=False, lapack_driver="gesdd",
                                 check_finite=False)
    U = (torch.from_numpy(np.ascontiguousarray(Q)) @ torch.from_numpy(Uhat)).numpy()
    U, s, Vt = U[:, :k], s[:k], Vt[:k]
    # svd_flip(u_based_decision=False): the largest |entry| of each component is positive
    signs = np.sign(Vt[np.arange(k), np.argmax(np.abs(Vt), axis=1)])
    signs[signs == 0] = 1
    U = U * signs
    Vt = Vt * signs[:, None]
    total_var = float(np.trace(G)) / (n - 1)
    explained = (s.astype(np.float64) ** 2) / (n - 1)
    return {"scores": (U * s).astype(np.float32), "mean": mean, "components": Vt.astype(np.float32),
            "explained_variance_ratio": explained / total_var, "solver": "randomized+gram"}


def _sklearn_pca(Z, k, random_state, solver) -> dict:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver=solver, random_state=random_state)
    scores = pca.fit_transform(Z)
    return {"scores": np.asarray(scores, dtype=np.float32), "mean": pca.mean_.astype(np.float32),
            "components": pca.components_.astype(np.float32),
            "explained_variance_ratio": pca.explained_variance_ratio_,
            "solver": pca._fit_svd_solver}
