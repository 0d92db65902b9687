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


def test_hest_ridge_matches_reference(embeddings):
    Xtr, Ytr, Xte, _ = embeddings
    ref, alpha = _hest_reference(Xtr, Ytr, Xte)
    head = HestRidge().fit(Xtr, Ytr)
    assert head.n_components_ == 256
    assert head.alpha_ == pytest.approx(alpha) == pytest.approx(100 / (256 * 6))
    assert not np.any(head.intercept_)
    P = head.predict(Xte)
    # same sklearn PCA (randomized: 600 x 400 -> 256) and LSQR iterations as sklearn's Ridge;
    # predict differs by float32 rounding only
    np.testing.assert_allclose(P, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert head.n_iter_.shape == (6,) and (head.n_iter_ > 1).all()
    # the exact ridge minimiser is close but not HEST's number (LSQR stops at tol=1e-4)
    exact = HestRidge(solver="cholesky").fit(Xtr, Ytr).predict(Xte)
    assert np.abs(exact - ref).max() > 10 * np.abs(P - ref).max()


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


def test_hest_ridge_user_alpha_and_small_data(embeddings, caplog):
    Xtr, Ytr, Xte, _ = embeddings
    assert HestRidge(alpha=5.0).fit(Xtr, Ytr).alpha_ == 5.0  # not overwritten, unlike HEST
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
    X, clean, rng = linear
    n = len(X)
    alphas = n * np.logspace(-4, 4, 17)
    low_noise = RidgeCVHead(alphas=alphas).fit(X, clean + 0.01 * rng.standard_normal(clean.shape))
    noise_only = RidgeCVHead(alphas=alphas).fit(X, rng.standard_normal(clean.shape))
    assert low_noise.alpha_ <= alphas[2]
    assert noise_only.alpha_ >= alphas[-3]
    assert low_noise.cv_scores_.shape == (17, 3)
    # GCV's choice is close to the best held-out alpha on fresh data from the same model
    Y = clean + 4 * rng.standard_normal(clean.shape)
    gcv = RidgeCVHead(alphas=alphas).fit(X[:300], Y[:300])
    test_mse = [((RidgeCVHead(alphas=[a]).fit(X[:300], Y[:300]).predict(X[300:]) - clean[300:])
                 ** 2).mean() for a in alphas]
    assert abs(np.log10(gcv.alpha_) - np.log10(alphas[int(np.argmin(test_mse))])) <= 1.0


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
