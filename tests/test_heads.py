"""Contract tests every stage-two head must pass: sklearn API, learning, determinism, persistence."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from stfeat.errors import InputError
from stfeat.heads import HEADS, load_head, make_head, save_head

# small, fast settings per head (defaults are tuned for real data sizes)
FAST = {
    "hest-ridge": {"n_components": 16},
    "ridge": {},
    "lgbm": {"n_estimators": 60, "n_jobs": 1},
    "mlp": {"hidden": 64, "max_epochs": 40, "patience": 8, "device": "cpu"},
    "attention": {"d_model": 32, "max_epochs": 30, "patience": 6, "device": "cpu"},
    "knn": {"n_neighbors": 10},
    "contrastive": {"dim": 32, "hidden": 64, "n_neighbors": 20, "max_epochs": 40, "patience": 8,
                    "device": "cpu"},
    "slide-transformer": {"d_model": 16, "max_epochs": 20, "patience": 5, "device": "cpu"},
    "ensemble": {"head_params": {"lgbm": {"n_estimators": 60, "n_jobs": 1}, "knn": {"n_neighbors": 10}}},
}


@pytest.fixture(scope="module")
def data():
    """A nonlinear multi-output signal: Y = linear + sin + noise on 24 features."""
    rng = np.random.default_rng(0)
    n, d, g = 360, 24, 4
    X = rng.standard_normal((n, d)).astype(np.float32)
    W = rng.standard_normal((d, g)) / np.sqrt(d)
    Y = X @ W + 0.8 * np.sin(1.5 * X[:, :g]) + 0.3 * rng.standard_normal((n, g)) + 2.0
    return X[:280], Y[:280], X[280:], Y[280:]


def _pearson(P, Y):
    Pc, Yc = P - P.mean(0), Y - Y.mean(0)
    return (Pc * Yc).sum(0) / (np.linalg.norm(Pc, axis=0) * np.linalg.norm(Yc, axis=0))


@pytest.fixture(scope="module")
def fitted(data):
    Xtr, Ytr, _, _ = data
    return {name: make_head(name, **FAST[name]).fit(Xtr, Ytr) for name in HEADS}


def test_registry_and_make_head():
    assert set(HEADS) == {"hest-ridge", "ridge", "lgbm", "mlp", "attention", "knn",
                          "contrastive", "slide-transformer", "ensemble"}
    for name, cls in HEADS.items():
        head = make_head(name)
        assert isinstance(head, cls) and head.name == name
    with pytest.raises(ValueError, match="unknown head 'nope'.*ridge"):
        make_head("nope")
    with pytest.raises(ValueError, match="no parameter"):
        make_head("ridge", not_a_param=1)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_unfitted_and_clone(name):
    head = make_head(name, **FAST[name])
    with pytest.raises(NotFittedError):
        head.predict(np.zeros((3, 24), np.float32))
    twin = clone(head)
    assert twin is not head and twin.get_params() == head.get_params()
    # __init__ only stores: set_params round-trips every parameter
    assert clone(head.set_params(**head.get_params())).get_params() == head.get_params()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_fit_predict_learns(name, data, fitted):
    Xtr, Ytr, Xte, Yte = data
    head = fitted[name]
    assert head.n_features_in_ == Xtr.shape[1] and head.n_outputs_ == Ytr.shape[1]
    assert any(k.endswith("_") and not k.startswith("_") for k in vars(head))
    P = head.predict(Xte)
    assert P.shape == Yte.shape and np.isfinite(P).all()
    r = _pearson(P, Yte)
    assert r.mean() > 0.5, f"{name}: mean r {r.mean():.3f}"
    if name != "hest-ridge":  # HEST's probe has no intercept: only its correlation is meaningful
        mse = ((P - Yte) ** 2).mean()
        mse_mean = ((Ytr.mean(0) - Yte) ** 2).mean()
        assert mse < 0.8 * mse_mean, f"{name}: mse {mse:.3f} vs mean predictor {mse_mean:.3f}"
    with pytest.raises(ValueError, match="features"):
        head.predict(Xte[:, :5])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_one_dimensional_target(name, data):
    Xtr, Ytr, Xte, _ = data
    head = make_head(name, **FAST[name]).fit(Xtr, Ytr[:, 0])
    assert head.predict(Xte).shape == (len(Xte),)


@pytest.mark.parametrize("name", ["mlp", "attention", "lgbm", "hest-ridge", "contrastive"])
def test_deterministic(name, data, fitted):
    Xtr, Ytr, Xte, _ = data
    again = make_head(name, **FAST[name]).fit(Xtr, Ytr)
    np.testing.assert_array_equal(again.predict(Xte), fitted[name].predict(Xte))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_save_load_roundtrip(name, data, fitted, tmp_path):
    _, _, Xte, _ = data
    head = fitted[name]
    P = head.predict(Xte)
    out = save_head(head, tmp_path / name)
    assert (out / "head.json").is_file() and (out / "arrays.safetensors").is_file()
    back = load_head(out)
    assert type(back) is type(head) and back.get_params() == head.get_params()
    np.testing.assert_array_equal(back.predict(Xte), P)
    np.testing.assert_array_equal(type(head).load(out).predict(Xte), P)
    # saving again over the folder replaces it atomically
    head.save(out)
    np.testing.assert_array_equal(load_head(out).predict(Xte), P)
    # pickling works too (for files stfeat wrote itself)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(head)).predict(Xte), P)


def test_load_errors(tmp_path, fitted):
    with pytest.raises(InputError, match="no head.json"):
        load_head(tmp_path)
    (tmp_path / "head.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="format"):
        load_head(tmp_path)
    fitted["ridge"].save(tmp_path / "r")
    with pytest.raises(InputError, match="RidgeCVHead, not a KNNHead"):
        HEADS["knn"].load(tmp_path / "r")


def test_bad_shapes(data):
    Xtr, Ytr, _, _ = data
    with pytest.raises(ValueError, match="same spots"):
        make_head("ridge").fit(Xtr, Ytr[:-3])


def test_lgbm_records_best_iterations(fitted):
    head = fitted["lgbm"]
    assert head.best_iterations_.shape == (4,)
    assert ((head.best_iterations_ >= 1) & (head.best_iterations_ <= 60)).all()
    assert len(head.boosters_) == 4


def test_lgbm_pca_and_groups(data):
    Xtr, Ytr, Xte, Yte = data
    groups = np.repeat(np.arange(7), 40)
    head = make_head("lgbm", n_estimators=60, pca_components=16, n_jobs=1).fit(Xtr, Ytr,
                                                                               groups=groups)
    assert head.components_.shape == (16, Xtr.shape[1])
    assert _pearson(head.predict(Xte), Yte).mean() > 0.2


def test_knn_retrieves_exemplars(data):
    Xtr, Ytr, _, _ = data
    head = make_head("knn", n_neighbors=1).fit(Xtr, Ytr)
    np.testing.assert_allclose(head.predict(Xtr[:20]), Ytr[:20], rtol=1e-6)
    sim, idx = head.kneighbors(Xtr[:5])
    assert (idx[:, 0] == np.arange(5)).all() and np.allclose(sim[:, 0], 1.0, atol=1e-5)
    for kw in ({"metric": "l2"}, {"weighting": "distance"}, {"weighting": "uniform"},
               {"pca_components": 8}):
        P = make_head("knn", n_neighbors=5, **kw).fit(Xtr, Ytr).predict(Xtr[:10])
        assert P.shape == (10, Ytr.shape[1]) and np.isfinite(P).all()


def test_mlp_corr_loss_and_groups(data):
    Xtr, Ytr, Xte, Yte = data
    groups = np.repeat(np.arange(7), 40)
    head = make_head("mlp", hidden=32, max_epochs=40, lr=3e-3, corr_weight=0.5, device="cpu")
    head.fit(Xtr, Ytr, groups=groups)
    assert 0 < head.best_epoch_ <= 40 and len(head.history_) >= 2
    assert _pearson(head.predict(Xte), Yte).mean() > 0.4
