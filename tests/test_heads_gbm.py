"""LightGBM head specifics: concurrent per-gene boosters, thread plan, feature reduction."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stfeat.heads import make_head
from stfeat.heads import gbm


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    n, d, g = 300, 40, 5
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = X[:, :g] + 0.5 * np.sin(2 * X[:, g:2 * g]) + 0.3 * rng.standard_normal((n, g))
    return X, Y


def test_concurrent_genes_match_one_by_one(data):
    X, Y = data
    kw = {"n_estimators": 40, "early_stopping_rounds": 5}
    one = make_head("lgbm", n_jobs=1, **kw).fit(X, Y)
    assert one._workers(Y.shape[1], X.size) == (1, 1)
    for n_jobs in (2, 3):
        many = make_head("lgbm", n_jobs=n_jobs, **kw).fit(X, Y)
        assert many._workers(Y.shape[1], X.size)[0] == n_jobs
        np.testing.assert_array_equal(many.best_iterations_, one.best_iterations_)
        np.testing.assert_array_equal(many.predict(X), one.predict(X))


def test_thread_plan(monkeypatch):
    head = make_head("lgbm", n_jobs=8)
    assert head._workers(250, 10**6) == (8, 1)   # many genes: one thread per booster
    assert head._workers(2, 10**6) == (2, 4)     # few genes: the threads are shared out
    assert head._workers(1, 10**6) == (1, 8)
    monkeypatch.setattr(gbm, "_MAX_COPY_BYTES", 3 * 10**6)
    assert head._workers(250, 10**6) == (4, 2)   # data copies per booster bound the workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("STFEAT_CPU_THREADS", raising=False)
    assert make_head("lgbm", n_jobs=-1)._threads() == 3  # the cores this process may use
    assert make_head("lgbm")._threads() == 3
    monkeypatch.setenv("STFEAT_CPU_THREADS", "2")
    assert make_head("lgbm")._threads() == 2


def test_defaults_boost_raw_features(data):
    X, Y = data
    head = make_head("lgbm", n_estimators=20, n_jobs=1).fit(X, Y[:, 0])
    assert head.components_ is None and head.best_iterations_.shape == (1,)
    assert head.predict(X).shape == (len(X),)
    # ~150 features per tree whatever the width; all of them for narrow inputs
    assert head.feature_fraction_ == 1.0
    assert head._feature_fraction(3000) == pytest.approx(0.05)
    assert make_head("lgbm", colsample_bytree=0.3)._feature_fraction(3000) == 0.3
    head = make_head("lgbm", n_estimators=20, n_jobs=1, pca_components=8).fit(X, Y)
    assert head.components_.shape == (8, X.shape[1]) and head.feature_fraction_ == 1.0
