"""The heads from the four papers (issue 11): contrastive retrieval; sklearn's estimator checks."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.heads import (AttentionHead, ContrastiveHead, RidgeCVHead, SlideTransformerHead,
                          load_head)
from stfeat.heads.attention import build_tokens
from stfeat.heads.slide_transformer import spatial_chunks


def _pearson(P, Y):
    Pc, Yc = P - P.mean(0), Y - Y.mean(0)
    return (Pc * Yc).sum(0) / (np.linalg.norm(Pc, axis=0) * np.linalg.norm(Yc, axis=0))


@pytest.fixture(scope="module")
def retrieval_task():
    """Spots of a few tissue types: features and expression both depend on the type."""
    rng = np.random.default_rng(5)
    n, d, g, types = 300, 16, 6, 5
    t = rng.integers(0, types, n)
    centres = rng.standard_normal((types, d)) * 2
    profiles = rng.standard_normal((types, g)) * 2 + 3
    X = (centres[t] + rng.standard_normal((n, d))).astype(np.float32)
    Y = profiles[t] + 0.3 * rng.standard_normal((n, g))
    return X[:200], Y[:200], X[200:], Y[200:]


def test_contrastive_retrieves_training_spots_only(retrieval_task, tmp_path):
    Xtr, Ytr, Xte, Yte = retrieval_task
    head = ContrastiveHead(dim=32, hidden=64, n_neighbors=500, max_epochs=30, device="cpu")
    head.fit(Xtr, Ytr)
    assert head.best_epoch_ > 0
    assert head._get_index().ntotal == len(Xtr)
    # k is capped at the number of training spots; every id is a training row
    for query in (Xte, np.concatenate([Xte, Xtr[:10]])):
        sim, idx = head.kneighbors(query)
        assert idx.shape == (len(query), len(Xtr))
        assert ((idx >= 0) & (idx < len(Xtr))).all()
        assert (np.sort(idx, axis=1) == np.arange(len(Xtr))).all()  # each training spot once
    # a test spot's own expression is never returned: predictions are convex combinations of
    # training rows, even for a test spot equal to no training spot
    P = head.predict(Xte)
    assert (P >= Ytr.min(0) - 1e-6).all() and (P <= Ytr.max(0) + 1e-6).all()
    np.testing.assert_allclose(head.Y_train_, Ytr.astype(np.float32))
    assert _pearson(P, Yte).mean() > 0.8
    # the FAISS index travels as serialised bytes in the arrays (no pickle)
    assert head.index_bytes_.dtype == np.uint8
    back = load_head(head.save(tmp_path / "c"))
    assert back._index is None
    np.testing.assert_array_equal(back.kneighbors(Xte)[1], head.kneighbors(Xte)[1])
    np.testing.assert_array_equal(back.predict(Xte), P)


def test_contrastive_options(retrieval_task):
    Xtr, Ytr, Xte, Yte = retrieval_task
    kw = dict(dim=16, hidden=32, n_neighbors=20, max_epochs=20, batch_size=32, device="cpu")
    for extra in ({"index_on": "image"}, {"mse_weight": 1.0, "prediction": "regression"},
                  {"mse_weight": 1.0, "prediction": "average"}, {"temperature": 0.2}):
        P = ContrastiveHead(**kw, **extra).fit(Xtr, Ytr).predict(Xte)
        assert P.shape == Yte.shape and _pearson(P, Yte).mean() > 0.5, extra
    with pytest.raises(ValueError, match="mse_weight"):
        ContrastiveHead(prediction="regression").fit(Xtr, Ytr)
    with pytest.raises(ValueError, match="index_on"):
        ContrastiveHead(index_on="both").fit(Xtr, Ytr)


# --------------------------------------------------------------------- spatial context
def context_task(context: bool, seed: int = 0, side: int = 16, n_samples: int = 5, d: int = 8,
                 g: int = 3):
    """Square grids (one per sample, each at its own offset); expression is a linear function
    of the mean features of the 4-8 spots within 150 um (``context``) or of the spot's own."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, g))
    out = []
    for s in range(n_samples):
        coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0
        coords = coords + rng.uniform(0, 5000, 2)
        F = rng.standard_normal((len(coords), d)).astype(np.float32)
        if context:
            dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
            A = ((dist > 0) & (dist < 150)).astype(float)
            Z = (A / A.sum(1, keepdims=True)) @ F
        else:
            Z = F
        Y = Z @ W + 0.3 * rng.standard_normal((len(F), g))
        out.append((F, Y, coords, np.full(len(F), f"s{s}")))
    X, Y, C, S = (np.concatenate(a) for a in zip(*out))
    return X, Y, C, S, S != f"s{n_samples - 1}"


def _r(P, Y):
    return float(np.mean(_pearson(P, Y)))


ST_FAST = dict(d_model=32, max_epochs=60, patience=10, lr=3e-3, dropout=0.0, input_dropout=0.0,
               chunk_size=64, weight_decay=1e-4, device="cpu")


def test_spatial_chunks_contiguous_within_samples():
    X, Y, C, S, _ = context_task(False, side=12, n_samples=2)
    chunks = spatial_chunks(C, S, 50)
    allidx = np.sort(np.concatenate(chunks))
    assert (allidx == np.arange(len(C))).all()  # a partition of the rows
    for c in chunks:
        assert len(c) <= 50 and len(set(S[c])) == 1
        ext = C[c].max(0) - C[c].min(0)
        assert (ext <= 12 * 100).all() and ext.max() <= 800  # compact, not strided
    again = spatial_chunks(C, S, 50)  # deterministic
    assert len(again) == len(chunks) and all((a == b).all() for a, b in zip(again, chunks))


@pytest.mark.parametrize("context", [True, False])
def test_slide_transformer_uses_context(context, tmp_path):
    X, Y, C, S, tr = context_task(context)
    te = ~tr
    ridge = _r(RidgeCVHead().fit(X[tr], Y[tr]).predict(X[te]), Y[te])
    head = SlideTransformerHead(**ST_FAST)
    head.fit(X[tr], Y[tr], coords_um=C[tr], sample_ids=S[tr], groups=S[tr])
    P = head.predict(X[te], coords_um=C[te], sample_ids=S[te])
    r = _r(P, Y[te])
    if context:
        assert ridge < 0.2 and r > ridge + 0.4, f"slide-transformer {r:.3f} vs ridge {ridge:.3f}"
        assert not head.reduced_to_skip_ and head.residual_share_ > 0.5
    else:
        assert r >= ridge - 0.02, f"slide-transformer {r:.3f} vs ridge {ridge:.3f}"
    # moving a whole test section leaves predictions unchanged (offsets, not absolute positions)
    P2 = head.predict(X[te], coords_um=C[te] + 12345.0, sample_ids=S[te])
    np.testing.assert_allclose(P2, P, atol=1e-4)
    back = load_head(head.save(tmp_path / "st"))
    np.testing.assert_array_equal(back.predict(X[te], coords_um=C[te], sample_ids=S[te]), P)


def test_slide_transformer_options():
    X, Y, C, S, tr = context_task(True, side=10, n_samples=3)
    kw = dict(ST_FAST, max_epochs=5)
    Yp = Y - Y.min()
    for extra in ({"learned_positions": True}, {"nonneg": True}, {"baseline": None}):
        head = SlideTransformerHead(**kw, **extra).fit(X[tr], Yp[tr], coords_um=C[tr],
                                                      sample_ids=S[tr])
        P = head.predict(X[~tr], coords_um=C[~tr], sample_ids=S[~tr])
        assert P.shape == Y[~tr].shape and np.isfinite(P).all()
        if extra.get("nonneg"):
            assert (P >= 0).all()
    with pytest.raises(ValueError, match="coords_um"):
        SlideTransformerHead(**kw).fit(X, Y, coords_um=C[:, :1])


def _tokens(X, C, S, k=8):
    """Own token + k nearest neighbours within each sample (as the cache's spatial graph)."""
    from scipy.spatial import cKDTree

    Xt = np.zeros((len(X), 1 + k, X.shape[1]), np.float32)
    rel = np.zeros((len(X), 1 + k, 2), np.float32)
    mask = np.ones((len(X), 1 + k), bool)
    for s in np.unique(S):
        rows = np.flatnonzero(S == s)
        _, j = cKDTree(C[rows]).query(C[rows], k=k + 1)
        Xt[rows], rel[rows], types, mask[rows] = build_tokens([X[rows]], C[rows], j[:, 1:])
    return Xt, rel, types, mask


@pytest.mark.parametrize("context", [True, False])
def test_nh2st_mode_uses_neighbours(context, tmp_path):
    X, Y, C, S, tr = context_task(context)
    te = ~tr
    Xt, rel, types, mask = _tokens(X, C, S)
    ridge = _r(RidgeCVHead().fit(X[tr], Y[tr]).predict(X[te]), Y[te])
    head = AttentionHead(d_model=32, max_epochs=60, patience=10, lr=3e-3, dropout=0.0,
                         input_dropout=0.0, weight_decay=1e-4, device="cpu", mode="nh2st")
    head.fit(Xt[tr], Y[tr], rel_pos=rel[tr], token_type=types, token_mask=mask[tr],
             groups=S[tr], coords_um=C[tr], sample_ids=S[tr])
    P = head.predict(Xt[te], rel_pos=rel[te], token_type=types, token_mask=mask[te])
    r = _r(P, Y[te])
    if context:
        assert ridge < 0.2 and r > ridge + 0.4, f"nh2st {r:.3f} vs ridge {ridge:.3f}"
        assert not head.reduced_to_skip_ and head.residual_share_ > 0.5
    else:
        assert r >= ridge - 0.02, f"nh2st {r:.3f} vs ridge {ridge:.3f}"
        # here attention has nothing to add: the metrics can say it reduced to its skip path
        if head.reduced_to_skip_:
            assert head.best_epoch_ == 0 and head.residual_share_ < 1e-12
            base = head.baseline_.predict(X[te])
            np.testing.assert_allclose(P, base, rtol=1e-5, atol=1e-5)
    back = load_head(head.save(tmp_path / "nh"))
    assert back.reduced_to_skip_ == head.reduced_to_skip_ and back.mode == "nh2st"
    np.testing.assert_array_equal(
        back.predict(Xt[te], rel_pos=rel[te], token_type=types, token_mask=mask[te]), P)


def test_nh2st_neighbour_targets():
    from stfeat.heads._nh2st import neighbour_targets

    X, Y, C, S, _ = context_task(False, side=6, n_samples=2)
    Xt, rel, types, mask = _tokens(X, C, S, k=4)
    allowed = S == "s0"
    Ynb, ok = neighbour_targets(Y, rel, mask, 1, C, S, allowed=allowed)
    assert (ok[S == "s1"] == 0).all() and (ok[S == "s0"] == 1).all()  # never another sample's
    i = 7  # an inner spot of s0: its 4 nearest are its edge-sharing grid neighbours
    d = np.linalg.norm(C[:36] - C[i], axis=1)
    np.testing.assert_allclose(Ynb[i], Y[:36][(d > 0) & (d < 120)].mean(0), rtol=1e-5)
    assert neighbour_targets(Y, rel, mask, 1, None, None)[1].sum() == 0


# --------------------------------------------------------------------- scikit-learn's contract
def _paper_heads():
    from stfeat.heads import HEADS

    tiny = {"contrastive": dict(dim=8, hidden=16, n_neighbors=5, max_epochs=3, patience=2,
                                device="cpu"),
            "slide-transformer": dict(d_model=8, n_heads=2, max_epochs=3, patience=2,
                                      device="cpu"),
            "attention": dict(d_model=8, n_heads=2, max_epochs=3, patience=2, device="cpu",
                              mode="nh2st")}
    return [HEADS[name](**kw) for name, kw in tiny.items() if name in HEADS]


# Expected failures, each for a reason:
# - check_regressors_train: sklearn asks for R^2 > 0.5 on its toy data after fit; with the few
#   epochs that keep this test fast the networks are not there yet (their learning is tested on
#   purpose-built data above).
# (row-order invariance passes since the ridge skip path predicts in float64.)
_EXPECTED = {"contrastive": {
    "check_regressors_train": "few epochs (speed); learning is tested separately"}}


def _expected(est):
    return _EXPECTED.get(est.name, {})


from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks(_paper_heads(), expected_failed_checks=_expected)
def test_sklearn_contract(estimator, check):
    check(estimator)
