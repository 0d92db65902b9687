"""The stacked ``ensemble`` head: weights from grouped out-of-fold predictions, no-pickle persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stfeat.heads import HEADS, EnsembleHead, RidgeCVHead, load_head, make_head, save_head


def _data(n=360, d=12, g=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, g))
    Y = X @ W + 0.3 * rng.normal(size=(n, g))
    groups = np.repeat(np.arange(6), n // 6)
    return X, Y, groups


def _r(Y, P):
    return np.mean([np.corrcoef(Y[:, j], P[:, j])[0, 1] for j in range(Y.shape[1])])


def test_registered_and_useless_base_head_gets_no_weight():
    assert HEADS["ensemble"] is EnsembleHead
    X, Y, groups = _data()
    Xte, Yte, _ = _data(seed=1)
    # a linear signal: ridge is right, kNN with one neighbour on 12-d noise is close to useless
    params = {"knn": {"n_neighbors": 1, "weighting": "uniform"}}
    ens = make_head("ensemble", heads=("ridge", "knn"), head_params=params, cv=3).fit(X, Y, groups=groups)
    assert ens.heads_ == ["ridge", "knn"] and ens.weights_.shape == (2, 3) and ens.n_inner_folds_ == 3
    assert np.all(ens.weights_ >= 0)
    assert np.all(ens.weights_[1] < 0.1) and np.all(ens.weights_[0] > 0.8)
    assert ens.base_scores_.shape == (2, 3) and ens.base_scores_[0].mean() > ens.base_scores_[1].mean() + 0.3
    r_ens = _r(Yte, ens.predict(Xte))
    r_ridge = _r(Yte, RidgeCVHead().fit(X, Y, groups=groups).predict(Xte))
    assert r_ens >= r_ridge - 0.01


def test_at_least_as_good_as_the_best_base_head_on_a_mixed_signal():
    rng = np.random.default_rng(3)
    n, d = 480, 6
    X = rng.normal(size=(n, d)).astype(np.float32)
    # gene 0 linear, gene 1 a threshold effect (trees), gene 2 both
    Y = np.c_[X[:, 0] * 2, 3.0 * (X[:, 1] > 0), X[:, 2] + 2.0 * (X[:, 3] > 0.5)] + 0.2 * rng.normal(size=(n, 3))
    groups = np.repeat(np.arange(8), n // 8)
    tr, te = groups < 6, groups >= 6
    params = {"lgbm": {"n_estimators": 100, "n_jobs": 1, "min_child_samples": 10}, "knn": {"n_neighbors": 8}}
    ens = EnsembleHead(head_params=params, n_jobs=1).fit(X[tr], Y[tr], groups=groups[tr])
    assert ens.heads_ == ["ridge", "lgbm", "knn"]
    r_ens = _r(Y[te], ens.predict(X[te]))
    r_base = [_r(Y[te], est.predict(X[te])) for est in ens.estimators_]
    assert r_ens >= max(r_base) - 0.02
    shared = EnsembleHead(head_params=params, per_gene=False, n_jobs=1).fit(X[tr], Y[tr], groups=groups[tr])
    assert np.allclose(shared.weights_, shared.weights_[:, :1])  # one vector for every gene


def test_inner_folds_never_split_a_group(monkeypatch):
    X, Y, groups = _data(n=120)
    seen = []
    orig = EnsembleHead._fit_one

    def spy(est, X_, Y_, g_):
        seen.append(None if g_ is None else set(np.unique(g_)))
        return orig(est, X_, Y_, g_)

    monkeypatch.setattr(EnsembleHead, "_fit_one", staticmethod(spy))
    ens = EnsembleHead(heads=("ridge",), cv=3).fit(X, Y, groups=groups)
    splits = ens._splits(len(X), groups)
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    assert len(seen) == 4 and all(len(s) == 4 for s in seen[:3]) and seen[3] == set(range(6))


def test_save_load_round_trip_without_pickle(tmp_path):
    X, Y, groups = _data(n=120)
    ens = EnsembleHead(head_params={"lgbm": {"n_estimators": 20, "n_jobs": 1}}, n_jobs=1).fit(X, Y, groups)
    d = save_head(ens, tmp_path / "ens")
    doc = json.loads((d / "head.json").read_text())
    assert doc["head"] == "ensemble" and doc["children"] == ["0_ridge", "1_lgbm", "2_knn"]
    assert (d / "heads" / "1_lgbm" / "head.json").is_file()
    assert not list(d.rglob("*.pkl")) and not list(d.rglob("*.joblib"))
    back = load_head(d)
    np.testing.assert_array_equal(back.predict(X), ens.predict(X))
    np.testing.assert_array_equal(back.weights_, ens.weights_)
    np.testing.assert_array_equal(back.base_scores_, ens.base_scores_)
    assert EnsembleHead.load(d).heads_ == ens.heads_


@pytest.mark.parametrize("params, match", [({"heads": ("ridge", "nope")}, "unknown"),
                                            ({"heads": ("ridge", "ensemble")}, "unsupported"),
                                            ({"heads": ("attention",)}, "token"),
                                            ({"heads": ("ridge", "ridge")}, "twice"),
                                            ({"head_params": {"lgbm": {}}, "heads": ("ridge",)}, "head_params"),
                                            ({"cv": 1}, "cv")])
def test_bad_parameters_are_explained(params, match):
    X, Y, _ = _data(n=60)
    with pytest.raises(ValueError, match=match):
        EnsembleHead(**params).fit(X, Y)


def test_tiny_data_falls_back_to_equal_weights():
    X, Y, _ = _data(n=60)
    ens = EnsembleHead(heads=("ridge", "knn")).fit(X[:3], Y[:3])
    assert ens.n_inner_folds_ == 0 and np.allclose(ens.weights_, 0.5)
    assert ens.predict(X[:5]).shape == (5, 3)
