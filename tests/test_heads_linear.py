"""hest-ridge against a hand-written HEST-Benchmark reference; ridge's penalty selection."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.heads import HestRidge, RidgeCVHead, make_head


def _hest_reference(X_train, y_train, X_test, seed=1, latent_dim=256):
    """HEST-Benchmark, written out from benchmark.py (predict_single_split) and trainer.py."""
    import torch
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("scaler", StandardScaler()),
                     ("PCA", PCA(n_components=latent_dim, random_state=seed))])
    X_train, X_test = torch.Tensor(pipe.fit_transform(X_train)), torch.Tensor(pipe.transform(X_test))
    alpha = 100 / (X_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(X_train, y_train)
    return reg.predict(X_test), alpha


@pytest.fixture(scope="module")
def embeddings():
    """Correlated, non-negative 'embeddings' (like CNN features) with 400 dims, 600 + 150 spots."""
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((750, 40))
    X = np.maximum(latent @ rng.standard_normal((40, 400)) / 6 + 0.3 *
                   rng.standard_normal((750, 400)), 0).astype(np.float32)
    Y = np.log1p(np.exp(latent[:, :5] @ rng.standard_normal((5, 6)) / 3 + 0.2 *
                        rng.standard_normal((750, 6))))
    return X[:600], Y[:600], X[600:], Y[600:]


def _pearson(P, T):
    Pc, Tc = P - P.mean(0), T - T.mean(0)
    return (Pc * Tc).sum(0) / np.linalg.norm(Pc, axis=0) / np.linalg.norm(Tc, axis=0)


def test_hest_ridge_matches_reference(embeddings):
    Xtr, Ytr, Xte, Yte = embeddings
    ref, alpha = _hest_reference(Xtr, Ytr, Xte)
    # backend="sklearn": scikit-learn's own scaler, PCA (randomized: 600 x 400 -> 256) and the
    # LSQR iterations of its Ridge; predictions differ by float32 rounding only
    sk = HestRidge(backend="sklearn").fit(Xtr, Ytr)
    assert sk.pca_solver_ == "randomized"
    np.testing.assert_allclose(sk.predict(Xte), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # default backend: the same algorithm with the same random start, iterated through the Gram
    # matrix. Its only difference is rounding, to which this case (256 of 400 components, 4 power
    # iterations) is sensitive: scikit-learn itself moves by ~1e-4 when X changes by 1e-7
    head = HestRidge().fit(Xtr, Ytr)
    assert head.n_components_ == 256 and head.pca_solver_ == "randomized+gram"
    assert head.alpha_ == pytest.approx(alpha) == pytest.approx(100 / (256 * 6))
    assert not np.any(head.intercept_)
    P = head.predict(Xte)
    rng = np.random.default_rng(0)
    X_pert = (Xtr * (1 + 1e-7 * rng.standard_normal(Xtr.shape))).astype(np.float32)
    ref_pert, _ = _hest_reference(X_pert, Ytr, Xte)
    noise = np.abs(ref_pert - ref).max()
    assert 0 < np.abs(P - ref).max() <= 3 * noise <= 1e-3 * np.abs(ref).max()
    np.testing.assert_allclose(_pearson(P, Yte), _pearson(ref, Yte), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(head.n_iter_, sk.n_iter_)
    assert head.n_iter_.shape == (6,) and (head.n_iter_ > 1).all()
    # the exact ridge minimiser is close but not HEST's number (LSQR stops at tol=1e-4)
    exact = HestRidge(solver="cholesky", backend="sklearn").fit(Xtr, Ytr).predict(Xte)
    assert np.abs(exact - ref).max() > 10 * np.abs(sk.predict(Xte) - ref).max()


def test_hest_fast_pca_matches_sklearn():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from stfeat.heads._base import standardize_fit
    from stfeat.heads._pca import pca_fit_transform, standard_scaler_transform

    rng = np.random.default_rng(3)
    n, d = 3000, 120
    X = (rng.standard_normal((n, 30)) @ rng.standard_normal((30, d)) * np.linspace(0.1, 5, d)
         + 0.1 * rng.standard_normal((n, d)) + 7).astype(np.float32)
    X[:, 5] = 2.5  # a constant feature: scale 1, as scikit-learn
    sc = StandardScaler().fit(X)
    mean, scale = standardize_fit(X)
    np.testing.assert_allclose(mean, sc.mean_, rtol=1e-12)
    np.testing.assert_allclose(scale, sc.scale_, rtol=1e-10)
    assert scale[5] == 1.0
    Z = standard_scaler_transform(X, mean, scale)
    np.testing.assert_array_equal(Z, sc.transform(X))  # bit for bit
    # 10 of 120 components with 7 power iterations: well converged, so equal to rounding
    for k, solver in ((10, "randomized"), (60, "auto")):
        ours = pca_fit_transform(Z, k, random_state=1, svd_solver=solver)
        pca = PCA(k, svd_solver=solver, random_state=1)
        T = pca.fit_transform(Z)
        assert ours["solver"] == ("randomized+gram" if solver == "randomized" else
                                  pca._fit_svd_solver) and T.dtype == np.float32
        np.testing.assert_allclose(ours["components"], pca.components_, rtol=0, atol=2e-4)
        np.testing.assert_allclose(ours["scores"], T, rtol=0, atol=2e-4 * np.abs(T).max())
        np.testing.assert_allclose(ours["explained_variance_ratio"],
                                   pca.explained_variance_ratio_, rtol=1e-3)
    # fewer samples than features: scikit-learn's own (transposed) randomized SVD runs
    Zw = rng.standard_normal((100, 600)).astype(np.float32)
    wide = pca_fit_transform(Zw, 20, random_state=1)
    assert wide["solver"] == "randomized" and wide["scores"].shape == (100, 20)
    np.testing.assert_array_equal(wide["scores"], PCA(20, random_state=1).fit_transform(Zw))


def test_lsqr_multi_matches_scipy_per_target():
    from scipy.sparse.linalg import lsqr

    from stfeat.heads._lsqr import lsqr_multi

    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, 40)) * np.logspace(0, -1, 40)
    B = A @ rng.standard_normal((40, 5)) + 0.1 * rng.standard_normal((300, 5))
    B[:, 4] = 0.0  # an all-zero target: x = 0 without iterating
    X, n_iter = lsqr_multi(A, B, damp=0.3, iter_lim=500)
    for j in range(5):
        x_ref, _, itn, *_ = lsqr(A, B[:, j], damp=0.3, atol=1e-4, btol=1e-4, iter_lim=500)
        assert n_iter[j] == itn
        # only the summation order of the products differs; LSQR amplifies rounding once it
        # nears the Krylov dimension: scipy itself moves by 1e-5 here when A is Fortran-ordered
        np.testing.assert_allclose(X[:, j], x_ref, rtol=0, atol=5e-5 * np.abs(x_ref).max())


def test_lsqr_compressed_matches_scipy():
    """Row compression by QR leaves LSQR's iterates unchanged: same iterations and solutions."""
    from scipy.sparse.linalg import lsqr

    from stfeat.heads._lsqr import _compress, lsqr_multi_compressed

    rng = np.random.default_rng(6)
    # well conditioned (Cholesky QR), with one target almost in range(A) (its residual norm is
    # computed directly) and one all-zero target
    A = rng.standard_normal((2000, 50)) * np.logspace(0.5, 0, 50)
    B = A[:, :5] @ rng.standard_normal((5, 8)) + rng.standard_normal((2000, 8))
    B[:, 6] = A[:, :5] @ rng.standard_normal(5) + 1e-5 * rng.standard_normal(2000)
    B[:, 7] = 0.0
    # ill conditioned (cond 1e5): Householder QR
    A2 = rng.standard_normal((2000, 50)) * np.logspace(0, -5, 50)
    for M in (A, A2):
        R, C, rr = _compress(M, B)
        Q, _ = np.linalg.qr(M)
        np.testing.assert_allclose(R.T @ R, M.T @ M, rtol=0, atol=1e-10 * np.abs(M.T @ M).max())
        np.testing.assert_allclose(np.abs(C), np.abs(Q.T @ B), rtol=0, atol=1e-8 * np.abs(B).max())
        np.testing.assert_allclose(np.sqrt(rr), np.linalg.norm(B - Q @ (Q.T @ B), axis=0),
                                   rtol=1e-6, atol=1e-9)
    X, n_iter = lsqr_multi_compressed(A, B, damp=0.2, iter_lim=500)
    for j in range(8):
        x_ref, _, itn, *_ = lsqr(A, B[:, j], damp=0.2, atol=1e-4, btol=1e-4, iter_lim=500)
        assert n_iter[j] == itn
        np.testing.assert_allclose(X[:, j], x_ref, rtol=0, atol=1e-9 * max(np.abs(x_ref).max(), 1))


def test_hest_ridge_user_alpha_and_small_data(embeddings, caplog):
    Xtr, Ytr, Xte, _ = embeddings
    assert HestRidge(alpha=5.0).fit(Xtr, Ytr).alpha_ == 5.0  # not overwritten, unlike HEST
    with pytest.raises(ValueError, match="backend must be"):
        HestRidge(backend="numpy").fit(Xtr, Ytr)
    # fewer spots than 256: components capped at min(n_samples, n_features)
    small = HestRidge().fit(Xtr[:100], Ytr[:100])
    assert small.n_components_ == 100 and small.alpha_ == pytest.approx(100 / (100 * 6))
    # dimreduce=None mode: no scaler/PCA, alpha from the raw feature count
    raw = HestRidge(n_components=None).fit(Xtr, Ytr)
    assert raw.coef_.shape == (6, 400) and raw.alpha_ == pytest.approx(100 / (400 * 6))
    assert raw.predict(Xte).shape == (150, 6)
    # with an intercept (not HEST's default) the LSQR path matches scikit-learn's Ridge as well
    from sklearn.linear_model import Ridge

    with_b = HestRidge(n_components=None, fit_intercept=True).fit(Xtr, Ytr)
    ref = Ridge(alpha=with_b.alpha_, solver="lsqr", fit_intercept=True).fit(
        Xtr.astype(np.float64), Ytr)
    np.testing.assert_allclose(with_b.predict(Xte), ref.predict(Xte.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(2)
    n, d = 500, 60
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d) + 1.0).astype(np.float32)
    W = rng.standard_normal((d, 3))
    clean = X @ W
    return X, clean, rng


def test_ridge_matches_closed_form(linear):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X, clean, rng = linear
    Y = clean + 3 * rng.standard_normal(clean.shape)
    grid = [3.0, 30.0, 300.0, 3000.0]
    # one alpha: Cholesky path; a grid: eigendecomposition path (primal, then dual when n < d)
    for alphas, Xf, Yf in (([30.0], X, Y), (grid, X, Y),
                           (grid, np.concatenate([X[:40], X[:40] ** 2], axis=1)[:, :70], Y[:40])):
        head = RidgeCVHead(alphas=alphas).fit(Xf, Yf)
        sc = StandardScaler().fit(Xf.astype(np.float64))
        ref = Ridge(alpha=head.alpha_).fit(sc.transform(Xf), Yf)
        np.testing.assert_allclose(head.predict(Xf), ref.predict(sc.transform(Xf)), rtol=1e-3,
                                   atol=1e-3 * np.abs(Yf).max())


def test_ridge_cv_picks_sensible_alpha(linear):
    X, clean, _ = linear
    rng = np.random.default_rng(12)  # own draws: independent of which tests ran before
    n = len(X)
    alphas = n * np.logspace(-4, 4, 17)
    low_noise = RidgeCVHead(alphas=alphas).fit(X, clean + 0.01 * rng.standard_normal(clean.shape))
    noise_only = RidgeCVHead(alphas=alphas).fit(X, rng.standard_normal(clean.shape))
    assert low_noise.alpha_ <= alphas[2]
    # pure noise: strong shrinkage (GCV's choice on noise varies between 3n and 1e4 n over draws)
    assert noise_only.alpha_ >= 3 * n
    assert low_noise.cv_scores_.shape == (17, 3)
    # GCV's choice does about as well on fresh data as the best alpha of the grid in hindsight
    Y = clean + 4 * rng.standard_normal(clean.shape)
    gcv = RidgeCVHead(alphas=alphas).fit(X[:300], Y[:300])
    test_mse = np.array([((RidgeCVHead(alphas=[a]).fit(X[:300], Y[:300]).predict(X[300:]) -
                           clean[300:]) ** 2).mean() for a in alphas])
    assert test_mse[list(alphas).index(gcv.alpha_)] <= 1.1 * test_mse.min()
    assert test_mse[list(alphas).index(gcv.alpha_)] < 0.5 * test_mse[-1]  # far from "no model"


def test_ridge_per_target_and_grouped_cv(linear):
    X, clean, rng = linear
    Y = np.column_stack([clean[:, 0] + 0.01 * rng.standard_normal(len(X)),
                         rng.standard_normal(len(X))])
    alphas = len(X) * np.logspace(-4, 4, 9)
    per = RidgeCVHead(alphas=alphas, alpha_per_target=True).fit(X, Y)
    assert per.alpha_.shape == (2,) and per.alpha_[0] < per.alpha_[1]
    groups = np.repeat(np.arange(5), 100)
    grouped = RidgeCVHead(alphas=alphas, cv=5, alpha_per_target=True).fit(X, Y, groups=groups)
    assert grouped.alpha_[0] < grouped.alpha_[1]
    # default cv="auto": grouped 5-fold when groups are given, GCV otherwise
    auto = RidgeCVHead(alphas=alphas).fit(X, Y, groups=groups)
    np.testing.assert_allclose(auto.cv_scores_, grouped.cv_scores_)
    gcv = RidgeCVHead(alphas=alphas, cv="gcv").fit(X, Y, groups=groups)
    assert not np.allclose(gcv.cv_scores_, grouped.cv_scores_)
    np.testing.assert_allclose(RidgeCVHead(alphas=alphas).fit(X, Y).cv_scores_, gcv.cv_scores_)
    with pytest.raises(ValueError, match="cv must be"):
        RidgeCVHead(alphas=alphas, cv=1).fit(X, Y)
    kfold = make_head("ridge", alphas=list(alphas), cv=3).fit(X, Y)
    assert kfold.predict(X).shape == Y.shape
    with pytest.raises(ValueError, match="at least 2 groups"):
        RidgeCVHead(cv=3).fit(X, Y, groups=np.zeros(len(X)))
    with pytest.raises(ValueError, match="positive"):
        RidgeCVHead(alphas=[0.0, 1.0]).fit(X, Y)


def _standardized(X):
    X = X.astype(np.float64)
    Xc = X - X.mean(0)
    return Xc / Xc.std(0)


@pytest.mark.parametrize("n,d", [(200, 30), (25, 60)], ids=["primal", "dual"])
def test_ridge_gcv_scores_match_explicit_hat_matrix(n, d):
    rng = np.random.default_rng(7)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d)).astype(np.float32)
    Y = X[:, :3] @ rng.standard_normal((3, 4)) + rng.standard_normal((n, 4))
    alphas = n * np.logspace(-2, 2, 5)
    head = RidgeCVHead(alphas=alphas, cv="gcv").fit(X, Y)
    Z = _standardized(X)
    Yc = Y - Y.mean(0)
    for i, a in enumerate(alphas):
        H = Z @ np.linalg.solve(Z.T @ Z + a * np.eye(d), Z.T)
        rss = ((Yc - H @ Yc) ** 2).sum(0)
        df = np.trace(H) + 1  # + intercept
        gcv = rss / n / (1 - df / n) ** 2 / Yc.var(0)
        np.testing.assert_allclose(head.cv_scores_[i], gcv, rtol=2e-3)


@pytest.mark.parametrize("n,d", [(200, 30), (40, 60)], ids=["primal", "dual"])
def test_ridge_grouped_cv_scores_match_explicit_refits(n, d):
    from sklearn.model_selection import GroupKFold

    rng = np.random.default_rng(8)
    X = (rng.standard_normal((n, d)) + 2.0).astype(np.float32)
    Y = X[:, :2] @ rng.standard_normal((2, 3)) + rng.standard_normal((n, 3))
    groups = np.repeat(np.arange(4), n // 4)
    alphas = n * np.logspace(-2, 2, 4)
    head = RidgeCVHead(alphas=alphas, cv=4).fit(X, Y, groups=groups)
    Z = _standardized(X)  # standardised once on all spots, as the head does
    sse = np.zeros((len(alphas), 3))
    for tr, te in GroupKFold(4).split(Z, groups=groups):
        mx, my = Z[tr].mean(0), Y[tr].mean(0)
        A, B = Z[tr] - mx, Y[tr] - my
        for i, a in enumerate(alphas):
            W = np.linalg.solve(A.T @ A + a * np.eye(d), A.T @ B)
            sse[i] += (((Z[te] - mx) @ W + my - Y[te]) ** 2).sum(0)
    Yc = Y - Y.mean(0)
    np.testing.assert_allclose(head.cv_scores_, sse / n / Yc.var(0), rtol=2e-3)
    # the final fit on all spots uses the chosen penalty
    a = head.alpha_
    W = np.linalg.solve(Z.T @ Z + a * np.eye(d), Z.T @ Yc)
    np.testing.assert_allclose(head.predict(X), Z @ W + Y.mean(0), rtol=0,
                               atol=1e-4 * np.abs(Y).max())


def test_tridiagonal_solver_matches_dense():
    from scipy.linalg.blas import ssyrk

    from stfeat.heads._tridiag import TridiagonalSolver

    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 80)).astype(np.float32)
    G64 = X.astype(np.float64).T @ X
    B = rng.standard_normal((80, 5))
    for G, lower in ((ssyrk(1.0, X.T, trans=0, lower=1), True),
                     (ssyrk(1.0, X.T, trans=0, lower=0), False), (G64.copy(), True)):
        ts = TridiagonalSolver(G, lower=lower)
        np.testing.assert_allclose(ts.eigenvalues, np.linalg.eigvalsh(G64), rtol=1e-4,
                                   atol=1e-4 * np.linalg.eigvalsh(G64).max())
        for a in (0.5, 50.0):
            W = ts.unrotate(ts.solve_rotated(a, ts.rotate(B)))
            ref = np.linalg.solve(G64 + a * np.eye(80), B)
            np.testing.assert_allclose(W, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
            assert ts.trace_hat(a) == pytest.approx(
                np.trace(np.linalg.solve(G64 + a * np.eye(80), G64)), rel=1e-5)
    one = TridiagonalSolver(np.array([[4.0]], np.float32))
    assert one.solve_rotated(1.0, one.rotate(np.array([[10.0]])))[0, 0] == pytest.approx(2.0)
