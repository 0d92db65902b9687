"""The heads from the four papers (issue 11): contrastive retrieval; sklearn's estimator checks."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.heads import ContrastiveHead, load_head


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


# --------------------------------------------------------------------- scikit-learn's contract
def _paper_heads():
    from stfeat.heads import HEADS

    tiny = {"contrastive": dict(dim=8, hidden=16, n_neighbors=5, max_epochs=3, patience=2,
                                device="cpu")}
    return [HEADS[name](**kw) for name, kw in tiny.items() if name in HEADS]


# Expected failures, each for a reason:
# - check_regressors_train: sklearn asks for R^2 > 0.5 on its toy data after fit; with the few
#   epochs that keep this test fast the networks are not there yet (their learning is tested on
#   purpose-built data above).
_EXPECTED = {"check_regressors_train": "few epochs (speed); learning is tested separately"}


def _expected(est):
    return _EXPECTED


from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks(_paper_heads(), expected_failed_checks=_expected)
def test_sklearn_contract(estimator, check):
    check(estimator)
