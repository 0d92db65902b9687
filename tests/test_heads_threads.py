"""Thread counts: ``n_jobs`` (scikit-learn's convention), deterministic, so refits are bit-identical."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stfeat.heads import _cpu, make_head


def test_resolve_n_jobs(monkeypatch):
    monkeypatch.delenv("STFEAT_CPU_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert _cpu.resolve_n_jobs(None) == 4  # the cores of the affinity, whatever the load
    assert _cpu.resolve_n_jobs(-1) == 4
    assert _cpu.resolve_n_jobs(-2) == 3
    assert _cpu.resolve_n_jobs(-9) == 1
    assert _cpu.resolve_n_jobs(7) == 7
    with pytest.raises(ValueError, match="n_jobs=0"):
        _cpu.resolve_n_jobs(0)
    monkeypatch.setenv("STFEAT_CPU_THREADS", "2")
    assert _cpu.resolve_n_jobs(None) == 2
    assert _cpu.resolve_n_jobs(3) == 3  # an explicit n_jobs wins over the environment
    for bad in ("many", "0"):
        monkeypatch.setenv("STFEAT_CPU_THREADS", bad)
        with pytest.raises(ValueError, match="STFEAT_CPU_THREADS"):
            _cpu.resolve_n_jobs(None)


def test_blas_threads_nesting(monkeypatch):
    from threadpoolctl import threadpool_info

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with _cpu.blas_threads(1):
        assert blas() and all(n == 1 for n in blas())
        with _cpu.blas_threads(2):  # nested: keeps the outer setting
            assert all(n == 1 for n in blas())
    assert blas() == before


def test_threads_used_follow_n_jobs(monkeypatch):
    """A head's fit runs BLAS and torch with the count its n_jobs resolves to, nothing sampled."""
    import torch
    from threadpoolctl import threadpool_info

    from stfeat.heads import _tridiag

    seen = []
    real = _tridiag.TridiagonalSolver.__init__

    def spy(self, *a, **k):
        seen.append(({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"},
                     torch.get_num_threads()))
        real(self, *a, **k)

    monkeypatch.setattr(_tridiag.TridiagonalSolver, "__init__", spy)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((200, 30)).astype(np.float32), rng.standard_normal((200, 3))
    old = torch.get_num_threads()
    make_head("ridge", n_jobs=1).fit(X, Y)
    assert seen and seen[-1] == ({1}, 1)
    assert torch.get_num_threads() == old  # restored


def _bytes(head, Xte) -> bytes:
    arrays = head._get_state()[1]
    return b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in sorted(arrays)) + \
        np.ascontiguousarray(head.predict(Xte)).tobytes()


@pytest.mark.parametrize("name,params", [
    ("ridge", {}),
    ("hest-ridge", {"n_components": 32}),
    ("knn", {"n_neighbors": 8, "pca_components": 16}),
    ("mlp", {"hidden": 256, "max_epochs": 3, "patience": 3, "batch_size": 256, "device": "cpu"}),
])
def test_refit_bit_identical_by_default(name, params, monkeypatch):
    """Two fits with the default n_jobs on the same data give the same bytes (problems large enough
    for the multi-threaded paths: hest-ridge's randomized Gram PCA, the MLP above one thread)."""
    monkeypatch.delenv("STFEAT_CPU_THREADS", raising=False)
    rng = np.random.default_rng(1)
    n, d, g = 1200, 600, 6
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = X[:, :g] * 0.5 + np.sin(X[:, g:2 * g]) + 0.3 * rng.standard_normal((n, g))
    first = _bytes(make_head(name, **params).fit(X[:1000], Y[:1000]), X[1000:])
    second = _bytes(make_head(name, **params).fit(X[:1000], Y[:1000]), X[1000:])
    assert first == second
