"""The attention head uses neighbour tokens; token layout helpers and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.heads import AttentionHead, RidgeCVHead
from stfeat.heads.attention import build_tokens


def _grid_neighbors(coords, k):
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def neighbour_task():
    """Spots on a grid; the target is a function of the four neighbours' features only."""
    rng = np.random.default_rng(3)
    side, d = 26, 12
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0
    n = len(coords)
    F = rng.standard_normal((n, d)).astype(np.float32)
    nb = _grid_neighbors(coords, 4)
    w = rng.standard_normal((d, 2))
    Y = F[nb].mean(axis=1) @ w + 0.1 * rng.standard_normal((n, 2))
    X, rel, types, mask = build_tokens([F], coords, nb)
    train = coords[:, 1] < 1800  # held-out rows at the top of the grid
    return X, rel, types, mask, Y, train, F


def test_build_tokens_layout():
    rng = np.random.default_rng(0)
    f0, f1 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    coords = np.arange(10, dtype=float).reshape(5, 2)
    nb = np.array([[1, -1], [0, 2], [1, 3], [2, 4], [3, -1]])
    X, rel, types, mask = build_tokens({"112": f0, "224": f1}, coords, nb, neighbor_scales=(0, 1))
    assert X.shape == (5, 2 + 2 * 2, 3) and types.tolist() == [0, 1, 2, 3, 2, 3]
    np.testing.assert_allclose(X[1, 2], f0[0]) and np.testing.assert_allclose(X[1, 3], f1[0])
    np.testing.assert_allclose(rel[1, 2], coords[0] - coords[1])
    assert not mask[0, 4] and not mask[0, 5] and mask[0, :4].all()
    assert (X[0, 4:] == 0).all() and (rel[:, :2] == 0).all()


def test_attention_uses_neighbours(neighbour_task):
    X, rel, types, mask, Y, train, F = neighbour_task
    test = ~train

    def r(P):
        return np.mean([np.corrcoef(P[:, j], Y[test, j])[0, 1] for j in range(Y.shape[1])])

    spot_only = RidgeCVHead().fit(F[train], Y[train]).predict(F[test])
    head = AttentionHead(d_model=32, max_epochs=60, patience=10, lr=3e-3, dropout=0.0,
                         input_dropout=0.0, weight_decay=1e-4, device="cpu")
    head.fit(X[train], Y[train], rel_pos=rel[train], token_type=types, token_mask=mask[train])
    assert head.n_own_ == 1 and head.best_epoch_ > 0
    P = head.predict(X[test], rel_pos=rel[test], token_type=types, token_mask=mask[test])
    assert r(spot_only) < 0.25
    assert r(P) > 0.6, f"attention r {r(P):.3f} vs spot-only {r(spot_only):.3f}"


def test_attention_input_checks(neighbour_task):
    X, rel, types, mask, Y, train, _ = neighbour_task
    head = AttentionHead(d_model=16, max_epochs=2, device="cpu", baseline=None)
    Xn = X.copy()
    Xn[~mask] = np.nan  # missing neighbours given as NaN instead of a mask
    head.fit(Xn[:200], Y[:200], rel_pos=rel[:200], token_type=types)
    assert head.baseline_ is None
    P = head.predict(Xn[200:260], rel_pos=rel[200:260])
    assert P.shape == (60, 2) and np.isfinite(P).all()
    with pytest.raises(ValueError, match="differ from fit"):
        head.predict(X[:5, :3], rel_pos=rel[:5, :3])
    with pytest.raises(ValueError, match="rel_pos"):
        head.predict(X[:5], rel_pos=rel[:5, :, :1])
    bad = X[:5].copy()
    bad[:, 0] = np.nan
    with pytest.raises(ValueError, match="token 0"):
        head.predict(bad, rel_pos=rel[:5])
