"""Stage two at scale (issue 13): lazy FeatureSet, ridge from sufficient statistics, cached statistics."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.errors import InputError
from stfeat.features import FeatureSet
from stfeat.heads.ridge import RidgeCVHead
from stfeat.suffstats import SuffStats, combine, sample_stats, solve
from test_fit_support import ENCODER, toy_dataset, toy_sample, write_toy_cache


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return root / "cache", toy_dataset(root / "cache")


def _load(toy, lazy):
    cache, samples = toy
    return FeatureSet.load(samples, encoder=ENCODER, cache_dir=cache, lazy=lazy)


def _data(n=600, d=24, g=5, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d) + rng.uniform(-2, 5, d)).astype(np.float32)
    Y = X @ rng.standard_normal((d, g)) * 0.3 + 2 * rng.standard_normal((n, g)) + 1
    return X, Y, np.repeat(np.array(list("ABCDEF")), n // 6)


# ------------------------------------------------------------------------------------------ lazy FeatureSet
def test_lazy_featureset_gives_the_in_memory_flat_and_tokens(toy):
    mem, lazy = _load(toy, False), _load(toy, True)
    assert lazy.is_lazy and not mem.is_lazy
    ids = mem.sample_ids
    np.testing.assert_array_equal(lazy.flat(ids), mem.flat(ids))
    t1, t2 = lazy.tokens(ids[:2], k=4), mem.tokens(ids[:2], k=4)
    np.testing.assert_array_equal(t1["X"], t2["X"])


def test_lazy_view_follows_the_sample_order_of_a_shuffled_cache(tmp_path):
    s, z = toy_sample("S1", "P", n_side=8)
    write_toy_cache(tmp_path, s, z, shuffle=True)
    mem = FeatureSet.load([s], encoder=ENCODER, cache_dir=tmp_path, lazy=False)
    lazy = FeatureSet.load([s], encoder=ENCODER, cache_dir=tmp_path, lazy=True)
    np.testing.assert_array_equal(lazy.flat(["S1"]), mem.flat(["S1"]))
    chunks = [X for _, _, X in lazy.iter_flat(["S1"], chunk_rows=5)]
    np.testing.assert_array_equal(np.concatenate(chunks), mem.flat(["S1"]))


def test_size_threshold_switches_to_lazy(toy, monkeypatch):
    assert not _load(toy, None).is_lazy  # tiny caches stay in memory
    monkeypatch.setenv("STFEAT_LAZY_BYTES", "1")
    assert _load(toy, None).is_lazy
    monkeypatch.setenv("STFEAT_LAZY_BYTES", "lots")
    with pytest.raises(InputError, match="STFEAT_LAZY_BYTES"):
        _load(toy, None)


def test_chunk_iterator_covers_every_row_once(toy):
    fs = _load(toy, True)
    ids = fs.sample_ids
    seen = {s: [] for s in ids}
    parts = []
    for sid, start, X in fs.iter_flat(ids, chunk_rows=7):
        assert 0 < len(X) <= 7
        seen[sid].append((start, start + len(X)))
        parts.append(X)
    for sid in ids:
        spans = seen[sid]
        assert spans[0][0] == 0 and spans[-1][1] == fs.samples[sid].n_spots
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    np.testing.assert_array_equal(np.concatenate(parts), _load(toy, False).flat(ids))


def test_neighbor_mean_of_a_lazy_sample_is_refused_by_name(toy):
    with pytest.raises(InputError, match="neighbor_mean"):
        next(_load(toy, True).iter_flat(["A1"], neighbor_mean=True))


# ------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("cv,grouped", [("gcv", False), ("auto", True), (3, True)])
@pytest.mark.parametrize("per_target", [False, True])
def test_suffstats_ridge_equals_ridgecvhead(cv, grouped, per_target):
    X, Y, groups = _data()
    ref = RidgeCVHead(cv=cv, alpha_per_target=per_target).fit(X, Y, groups=groups if grouped else None)
    if grouped:
        stats = {g: sample_stats(X=X[groups == g], Y=Y[groups == g], precision="float64") for g in "ABCDEF"}
    else:
        stats = sample_stats(X=X, Y=Y, precision="float64")
    got = solve(stats, RidgeCVHead(cv=cv, alpha_per_target=per_target))
    np.testing.assert_array_equal(np.atleast_1d(got.alpha_), np.atleast_1d(ref.alpha_))
    P, Pref = got.predict(X), ref.predict(X)
    assert np.abs(P - Pref).max() <= 1e-6 * np.abs(Pref).max()
    np.testing.assert_allclose(got.cv_scores_, ref.cv_scores_, rtol=1e-5)


def test_public_names():
    import stfeat as st

    assert st.suffstats.solve is solve and "suffstats" in dir(st)


def test_stats_summed_in_any_order_equal_all_at_once():
    X, Y, groups = _data(seed=1)
    whole = sample_stats(X=X, Y=Y, precision="float64")
    parts = [sample_stats(X=X[groups == g], Y=Y[groups == g], precision="float64") for g in "ABCDEF"]
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2]):
        tot = combine(parts[i] for i in order)
        assert tot.n == whole.n
        for a, b in zip(tot.centred(), whole.centred()):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
    # a round trip through plain arrays (the cache format) keeps them
    back = SuffStats.from_arrays(whole.to_arrays())
    np.testing.assert_array_equal(back.sxx, whole.sxx)
    with pytest.raises(InputError, match="cannot be combined"):
        whole + sample_stats(X=X[:, :5], Y=Y)


def test_float32_chunk_products_stay_close():
    X, Y, _ = _data(seed=2)
    ref = solve(sample_stats(X=X, Y=Y, precision="float64"))
    got = solve(sample_stats(X=X, Y=Y, chunk_rows=64))
    assert got.alpha_ == ref.alpha_
    np.testing.assert_allclose(got.predict(X), ref.predict(X), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("with_patients,cv", [(True, "auto"), (False, "auto"), (False, 2)])
def test_cross_validate_from_stats_gives_the_same_results(tmp_path, with_patients, cv):
    from stfeat.crossval import cross_validate

    samples = toy_dataset(tmp_path, with_patients=with_patients)
    fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True)
    kw = dict(head="ridge", genes="hvg:10", head_params={"cv": cv})
    a = cross_validate(fs, suffstats=False, **kw)
    b = cross_validate(fs, **kw)  # lazy features: statistics by default
    assert list(tmp_path.rglob("*.stats-*.npz"))
    for fold in a.estimators:
        assert np.all(a.estimators[fold].alpha_ == b.estimators[fold].alpha_)
    for (_, s1, P1, _), (_, s2, P2, _) in zip(a.items, b.items):
        assert s1 == s2
        assert np.abs(P1 - P2).max() <= 1e-4 * np.abs(P1).max()
    assert abs(a.mean_r - b.mean_r) < 1e-4


def test_fit_from_stats_gives_the_same_model(tmp_path):
    from stfeat.fitting import fit

    samples = toy_dataset(tmp_path)
    fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path)
    m1 = fit(fs, head="ridge", genes="hvg:10", suffstats=False)
    m2 = fit(fs, head="ridge", genes="hvg:10", suffstats=True)
    assert m1.estimator.alpha_ == m2.estimator.alpha_
    X = fs.flat(fs.sample_ids)
    P1, P2 = m1.estimator.predict(X), m2.estimator.predict(X)
    assert np.abs(P1 - P2).max() <= 1e-4 * np.abs(P1).max()
    with pytest.raises(InputError, match="suffstats=True"):
        fit(fs, head="knn", genes="hvg:10", suffstats=True)


def test_cached_stats_are_reused_and_invalidated_when_features_change(tmp_path, monkeypatch):
    import stfeat.suffstats_cache as ssc

    samples = toy_dataset(tmp_path, layout=(("A", 1), ("B", 1)))
    layout = {"kind": "flat", "scales": ["112", "224"], "k_neighbors": 8, "neighbor_mean": False}
    genes = ["G000", "G001", "G002"]
    fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True)
    first = ssc.featureset_stats(fs, ["A1", "B1"], genes, "log1p_cp10k", layout)
    files = sorted(tmp_path.rglob("*.stats-*.npz"))
    assert len(files) == 2

    calls = []
    real = ssc.sample_stats
    monkeypatch.setattr(ssc, "sample_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = ssc.featureset_stats(fs, ["A1", "B1"], genes, "log1p_cp10k", layout)
    assert calls == []  # both read back
    np.testing.assert_array_equal(again["A1"].sxx, first["A1"].sxx)

    ssc.featureset_stats(fs, ["A1"], genes[:2], "log1p_cp10k", layout)  # other genes: another key
    assert len(calls) == 1
    assert len(list(tmp_path.rglob("A1.h5.stats-*.npz"))) == 2  # both settings kept
    ssc.featureset_stats(fs, ["A1"], genes, "log1p_cp10k", layout)
    assert len(calls) == 1

    # stage one rewrites A1's features: its statistics are recomputed and the stale file replaced
    s, z = toy_sample("A1", "A")
    write_toy_cache(tmp_path, s, z, seed=99)
    fs2 = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True)
    new = ssc.featureset_stats(fs2, ["A1"], genes, "log1p_cp10k", layout)
    assert len(calls) == 2
    assert not np.allclose(new["A1"].sxx, first["A1"].sxx)
    assert len(list(tmp_path.rglob("A1.h5.stats-*.npz"))) == 1


# ------------------------------------------------------------------------------------------ knn index
def test_knn_switches_to_ivf_above_the_threshold(tmp_path):
    from stfeat.heads.knn import KNNHead

    X, Y, _ = _data(n=900, d=16, seed=3)
    flat = KNNHead(n_neighbors=5).fit(X, Y)
    assert flat.index_kind() == "flat" and flat.index_kind(2_000_000) == "ivf"
    ivf = KNNHead(n_neighbors=5, ivf_threshold=500, nprobe=10_000).fit(X, Y)  # every cell probed: exact
    assert ivf.index_kind() == "ivf" and type(ivf._index).__name__.startswith("IndexIVF")
    np.testing.assert_allclose(ivf.predict(X[:50]), flat.predict(X[:50]), rtol=1e-5, atol=1e-6)
    approx = KNNHead(n_neighbors=5, ivf_threshold=500, nprobe=1).fit(X, Y)
    assert approx._index.nprobe == 1 and approx.predict(X[:50]).shape == (50, Y.shape[1])
    ivf.save(tmp_path / "knn")  # reloaded, it rebuilds the same index from the stored vectors
    back = KNNHead.load(tmp_path / "knn")
    assert back.index_kind() == "ivf"
    np.testing.assert_allclose(back.predict(X[:50]), ivf.predict(X[:50]), rtol=1e-6)
    with pytest.raises(ValueError, match="index must be"):
        KNNHead(index="hnsw").fit(X, Y)


def test_predict_chunks_equals_predict_on_the_whole_matrix(toy):
    from stfeat.heads.knn import KNNHead
    from stfeat.suffstats_cache import predict_chunks

    fs = _load(toy, True)
    ids = fs.sample_ids
    X = _load(toy, False).flat(ids)
    Y = X[:, :3] @ np.ones((3, 2)) + 1.0
    layout = {"kind": "flat", "scales": fs.scales, "neighbor_mean": False, "k_neighbors": 8}
    for est in (RidgeCVHead().fit(X, Y), KNNHead(n_neighbors=3).fit(X, Y)):
        np.testing.assert_allclose(predict_chunks(est, fs, ids, layout, chunk_rows=13),
                                   est.predict(X).astype(np.float32), rtol=1e-6, atol=1e-6)
    ridge = RidgeCVHead().fit(X, Y)
    fast = predict_chunks(ridge, fs, ids, layout, chunk_rows=13, precision="float32")
    np.testing.assert_allclose(fast, ridge.predict(X), rtol=1e-5, atol=1e-5 * np.abs(Y).max())
    wrong = RidgeCVHead().fit(X[:, :5], Y)
    with pytest.raises(ValueError, match="features"):
        predict_chunks(wrong, fs, ids, layout)


def test_bad_rows_are_named():
    X, Y, _ = _data(n=50, d=4)
    X[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sample_stats(X=X, Y=Y)
    with pytest.raises(InputError, match="rows"):
        sample_stats(X=X[:10], Y=Y[:9])


def test_mlp_trains_from_chunks_of_a_lazy_featureset(toy):
    from stfeat.evaluate import pearson_per_gene
    from stfeat.heads._mlp_chunks import fit_mlp_featureset
    from stfeat.heads.mlp import MLPHead

    fs = _load(toy, True)
    genes = [f"G{i:03d}" for i in range(8)]
    train, test = ["A1", "A2", "B1", "B2"], ["C1"]
    groups = {s: s[0] for s in fs.sample_ids}

    def fit():
        head = MLPHead(hidden=32, max_epochs=15, patience=5, batch_size=32, device="cpu", n_jobs=1)
        return fit_mlp_featureset(head, fs, train, genes, "log1p_cp10k", groups, chunk_rows=50)

    a, b = fit(), fit()
    X = fs.flat(test)
    P = a.predict(X)
    np.testing.assert_array_equal(P, b.predict(X))  # deterministic on CPU
    assert a.best_epoch_ >= 1 and len(a.history_) >= 2
    # one of the two patients validates (whole groups), the other's spots set the standardisation
    means = [np.concatenate([fs.targets(s, genes, "log1p_cp10k") for s in train if s[0] == p]).mean(0) for p in "AB"]
    assert any(np.allclose(a.y_mean_, m, rtol=1e-6) for m in means)
    r = pearson_per_gene(fs.targets("C1", genes, "log1p_cp10k"), P)
    assert np.nanmean(r) > 0.3  # learnt the signal of a held-out patient


def test_cross_validate_mlp_on_lazy_features_trains_from_chunks(toy, monkeypatch):
    import stfeat.heads._mlp_chunks as mc
    from stfeat.crossval import cross_validate

    calls = []
    real = mc.fit_mlp_featureset
    monkeypatch.setattr(mc, "fit_mlp_featureset", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    cv = cross_validate(_load(toy, True), head="mlp", genes="hvg:5",
                        head_params={"hidden": 16, "max_epochs": 3, "device": "cpu", "n_jobs": 1})
    assert len(calls) == len(cv.rows) == 3
    assert all(np.isfinite(P).all() for _, _, P, _ in cv.items)


# ------------------------------------------------------------------------------------------ per-slide standardisation
def test_streamed_slide_stats_equal_the_in_memory_ones(toy):
    from stfeat.heads._base import _standardize_fit_rows, standardize_fit

    mem, lazy = _load(toy, False), _load(toy, True)
    for sid in mem.sample_ids:
        a, b = mem.samples[sid].slide_stats(mem.scales), lazy.samples[sid].slide_stats(lazy.scales)
        for s in mem.scales:
            np.testing.assert_allclose(b[s][0], a[s][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(b[s][1], a[s][1], rtol=1e-10)
    # several blocks, a constant column: the pairwise merge keeps it constant (scale 1)
    X = np.random.default_rng(0).standard_normal((5000, 3)).astype(np.float32) * 4 + 100
    X[:, 1] = 7.5
    m1, s1 = standardize_fit(X)

    class Rows:  # a row-sliceable view with small blocks
        shape = X.shape

        def rows(self, a, b):
            return X[a:b]
    import stfeat.heads._base as base
    real = base._standardize_fit_rows
    m2, s2 = real(Rows())
    np.testing.assert_allclose(m2, m1, rtol=1e-12)
    np.testing.assert_allclose(s2, s1, rtol=1e-9)
    assert s2[1] == 1.0
    assert _standardize_fit_rows is real


def test_lazy_chunks_and_tokens_are_standardised_per_slide(toy):
    from stfeat.head_inputs import token_features, token_rows

    mem = _load(toy, False).with_standardize("slide")
    lazy = _load(toy, True).with_standardize("slide")
    ids = mem.sample_ids
    ref = mem.flat(ids)
    chunks = np.concatenate([X for _, _, X in lazy.iter_flat(ids, chunk_rows=17, reuse_buffer=False)])
    np.testing.assert_allclose(chunks, ref, rtol=1e-5, atol=1e-5)
    assert abs(float(chunks[:lazy.samples[ids[0]].n_spots].mean())) < 1e-4
    sf_m, sf_l = mem.samples[ids[0]], lazy.samples[ids[0]]
    t_ref = token_features(sf_m, mem.scales, k=4, standardize="slide")
    t = token_rows(sf_l, lazy.scales, 5, 30, k=4, standardize="slide")
    np.testing.assert_allclose(t["X"], t_ref["X"][5:30], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(t["mask"], t_ref["mask"][5:30])


def test_cross_validate_and_fit_from_stats_under_slide_standardisation(tmp_path):
    from stfeat.crossval import cross_validate
    from stfeat.fitting import fit

    samples = toy_dataset(tmp_path)
    fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True, standardize="slide")
    kw = dict(head="ridge", genes="hvg:10", conformal=None)
    a = cross_validate(fs, suffstats=False, **kw)  # the whole standardised matrix in memory (float64 scaling)
    b = cross_validate(fs, **kw)  # lazy: statistics of standardised row chunks
    assert b.provenance["standardize"] == "slide"
    for fold in a.estimators:
        assert np.all(a.estimators[fold].alpha_ == b.estimators[fold].alpha_)
    for (_, s1, P1, _), (_, s2, P2, _) in zip(a.items, b.items):
        assert s1 == s2
        assert np.abs(P1 - P2).max() <= 1e-4 * np.abs(P1).max()
    raw = cross_validate(fs.with_standardize("none"), **kw)
    assert abs(raw.mean_r - b.mean_r) > 1e-6  # the standardisation changed the result
    keys = {p.name.split(".stats-")[1] for p in tmp_path.rglob("A1.h5.stats-*.npz")}
    assert len(keys) == 2  # raw and standardised statistics never share a file

    m_mem = fit(FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=False, standardize="slide"),
                head="ridge", genes="hvg:10")
    m_lazy = fit(fs, head="ridge", genes="hvg:10")
    assert m_lazy.layout["standardize"] == "slide" and m_mem.estimator.alpha_ == m_lazy.estimator.alpha_
    sf_mem = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=False).samples["C1"]
    sf_lazy = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True).samples["C1"]
    P_mem, P_lazy = m_mem.predict_features(sf_mem), m_lazy.predict_features(sf_lazy)  # lazy: row chunks
    assert np.abs(P_mem - P_lazy).max() <= 1e-4 * np.abs(P_mem).max()


def test_attention_and_mlp_train_from_standardised_chunks(toy, monkeypatch):
    import stfeat.heads._attn_chunks as ac
    import stfeat.heads._mlp_chunks as mc
    from stfeat.crossval import cross_validate

    seen = []
    real_mlp, real_attn = mc.fit_mlp_featureset, ac.fit_attention_featureset
    monkeypatch.setattr(mc, "fit_mlp_featureset", lambda *a, **k: seen.append(("mlp", a[1].standardize)) or real_mlp(*a, **k))
    monkeypatch.setattr(ac, "fit_attention_featureset",
                        lambda *a, **k: seen.append(("attention", a[1].standardize)) or real_attn(*a, **k))
    fs = _load(toy, True)
    for head, params in (("mlp", {"hidden": 16, "max_epochs": 2, "device": "cpu", "n_jobs": 1}),
                         ("attention", {"max_epochs": 2, "device": "cpu", "n_jobs": 1})):
        cv = cross_validate(fs, head=head, genes="hvg:5", head_params=params, standardize="slide", conformal=None)
        assert all(np.isfinite(P).all() for _, _, P, _ in cv.items)
    assert ("mlp", "slide") in seen and ("attention", "slide") in seen


# ------------------------------------------------------------------------------------------ knn from chunks
KNN_GENES, KNN_TRAIN = [f"G{i:03d}" for i in range(6)], ["A1", "A2", "B1", "B2"]


def _knn_case(toy, standardize="none"):
    """Lazy features, the whole training rows the chunks give (standardised per slide under ``standardize``),
    their targets and the held-out C1 rows as queries (none is its own neighbour)."""
    fs = _load(toy, True).with_standardize(standardize)
    rows = lambda ids: np.concatenate([X.copy() for _, _, X in fs.iter_flat(ids, chunk_rows=1000)])  # noqa: E731
    Y = np.concatenate([fs.targets(s, KNN_GENES, "log1p_cp10k") for s in KNN_TRAIN])
    return fs, rows(KNN_TRAIN), Y, rows(["C1"])


@pytest.mark.parametrize("standardize", ["none", "slide"])
@pytest.mark.parametrize("metric,weighting", [("cosine", "softmax"), ("l2", "softmax"), ("cosine", "distance"),
                                              ("l2", "uniform")])
def test_knn_fit_from_chunks_equals_knnhead_fit(toy, tmp_path, metric, weighting, standardize):
    from stfeat.heads._knn_chunks import fit_knn_featureset
    from stfeat.heads.knn import KNNHead

    fs, X, Y, Xq = _knn_case(toy, standardize)
    kw = dict(n_neighbors=7, metric=metric, weighting=weighting)
    ref = KNNHead(**kw).fit(X, Y)
    got = fit_knn_featureset(KNNHead(**kw), fs, KNN_TRAIN, KNN_GENES, "log1p_cp10k", chunk_rows=13)
    assert got.index_kind() == "flat" and type(got._index) is type(ref._index)
    np.testing.assert_array_equal(got.kneighbors(Xq)[1], ref.kneighbors(Xq)[1])  # exact search: same neighbours
    np.testing.assert_allclose(got.predict(Xq), ref.predict(Xq), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.Y_train_, ref.Y_train_)
    np.testing.assert_allclose(got.index_features_, ref.index_features_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mean_, ref.mean_, rtol=1e-9, atol=1e-9)
    assert {k for k in vars(ref) if k.endswith("_")} == {k for k in vars(got) if k.endswith("_")}
    got.save(tmp_path / "knn")  # the same fitted state: persists and reloads
    np.testing.assert_allclose(KNNHead.load(tmp_path / "knn").predict(Xq), got.predict(Xq), rtol=1e-6)


def test_knn_from_chunks_with_pca_and_ivf(toy):
    from stfeat.heads._knn_chunks import fit_knn_featureset
    from stfeat.heads.knn import KNNHead

    fs, X, Y, Xq = _knn_case(toy)
    chunked = lambda head, cr=29: fit_knn_featureset(head, fs, KNN_TRAIN, KNN_GENES, "log1p_cp10k",  # noqa: E731
                                                     chunk_rows=cr)
    for metric in ("cosine", "l2"):  # PCA axes from the streamed covariance: the same subspace
        kw = dict(n_neighbors=5, metric=metric, pca_components=6)
        ref, got = KNNHead(**kw).fit(X, Y), chunked(KNNHead(**kw), 11)
        assert got.components_.shape == ref.components_.shape == (6, X.shape[1])
        np.testing.assert_array_equal(got.kneighbors(Xq)[1], ref.kneighbors(Xq)[1])
        np.testing.assert_allclose(got.predict(Xq), ref.predict(Xq), rtol=1e-4, atol=1e-4)
    # IVF from a lowered threshold: the same cells and seeded training rows as KNNHead.fit
    kw = dict(n_neighbors=5, ivf_threshold=100, nprobe=10_000)  # every cell probed: exact
    ref, got = KNNHead(**kw).fit(X, Y), chunked(KNNHead(**kw))
    assert got.index_kind() == "ivf" and type(got._index).__name__.startswith(("IndexIVF", "GpuIndexIVF"))
    assert got._index.nlist == ref._index.nlist and got._index.ntotal == len(X)
    np.testing.assert_allclose(got.predict(Xq), ref.predict(Xq), rtol=1e-5, atol=1e-5)
    one = dict(n_neighbors=5, ivf_threshold=100, nlist=1)  # 256 of the 324 rows train the cell
    np.testing.assert_allclose(chunked(KNNHead(**one)).predict(Xq), KNNHead(**one).fit(X, Y).predict(Xq),
                               rtol=1e-5, atol=1e-5)
    approx = chunked(KNNHead(n_neighbors=5, ivf_threshold=100, nprobe=1))
    assert approx._index.nprobe == 1 and np.isfinite(approx.predict(Xq)).all()
    with pytest.raises(ValueError, match="metric must be"):
        chunked(KNNHead(metric="dot"))


def test_cross_validate_and_fit_knn_on_lazy_features_go_through_chunks(toy, monkeypatch):
    import stfeat.heads._knn_chunks as kc
    from stfeat.crossval import cross_validate
    from stfeat.fitting import fit

    calls = []
    real = kc.fit_knn_featureset
    monkeypatch.setattr(kc, "fit_knn_featureset", lambda *a, **k: calls.append(list(a[2])) or real(*a, **k))
    kw = dict(head="knn", genes="hvg:5", head_params={"n_neighbors": 5}, conformal=None)
    cv = cross_validate(_load(toy, True), **kw)
    assert len(calls) == len(cv.rows) == 3
    # in memory: KNNHead.fit on the whole matrix (the same rows; per-slide standardised rows would differ in
    # their last float32 bits between the two readers, enough to swap two nearly tied neighbours)
    ref = cross_validate(_load(toy, False), **kw)
    for (_, s1, P1, _), (_, s2, P2, _) in zip(ref.items, cv.items):
        assert s1 == s2
        np.testing.assert_allclose(P2, P1, rtol=1e-5, atol=1e-5)
    slide = cross_validate(_load(toy, True), **kw, standardize="slide")
    assert len(calls) == 6 and all(np.isfinite(P).all() for _, _, P, _ in slide.items)
    m = fit(_load(toy, True), head="knn", genes="hvg:5", head_params={"n_neighbors": 5})
    assert len(calls) == 7 and len(m.estimator.Y_train_) == sum(_load(toy, True).samples[s].n_spots for s in calls[-1])
    calls.clear()
    cross_validate(_load(toy, True), split="block:2", **kw)
    assert calls == []  # spot-level folds keep the in-memory path


def test_statistics_computed_by_separate_jobs_are_summed(tmp_path, monkeypatch):
    """Samples' statistics computed in two other processes (a job array) are reused and summed here."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    import stfeat.suffstats_cache as ssc
    from stfeat.heads.ridge import RidgeCVHead

    import stfeat as st
    from test_fit_support import write_toy_disk

    manifest = write_toy_disk(tmp_path / "disk", toy_dataset(tmp_path))  # the samples every job reads
    samples = st.read(manifest)
    genes = ["G000", "G001", "G002", "G003"]
    layout = {"kind": "flat", "scales": ["112", "224"], "k_neighbors": 8, "neighbor_mean": False,
              "standardize": "slide"}
    ids = [s.sample_id for s in samples]
    tests = Path(__file__).resolve().parent
    for part in (ids[:2], ids[2:]):  # two "jobs", each over its own samples
        code = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(tests)!r})
            from stfeat.features import FeatureSet
            import stfeat.suffstats_cache as ssc
            from test_fit_support import ENCODER
            import stfeat as st
            samples = [s for s in st.read({str(manifest)!r}) if s.sample_id in {part!r}]
            fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir={str(tmp_path)!r}, lazy=True, standardize="slide")
            ssc.featureset_stats(fs, {part!r}, {genes!r}, "log1p_cp10k", {layout!r})
        """)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tests.parent),
                       env={**__import__("os").environ, "PYTHONPATH": str(tests.parent)})
    assert len(list(tmp_path.rglob("*.stats-*.npz"))) == len(ids)
    calls = []
    real = ssc.sample_stats
    monkeypatch.setattr(ssc, "sample_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    fs = FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp_path, lazy=True, standardize="slide")
    stats = ssc.featureset_stats(fs, ids, genes, "log1p_cp10k", layout)
    assert calls == []  # every sample's statistics came from the jobs
    got = ssc.fit_ridge(RidgeCVHead(), stats, {s: fs.samples[s].patient for s in ids})
    X = fs.flat(ids)
    Y = np.concatenate([fs.targets(s, genes, "log1p_cp10k") for s in ids])
    ref = RidgeCVHead().fit(X, Y, groups=np.concatenate([[fs.samples[s].patient] * fs.samples[s].n_spots
                                                         for s in ids]))
    assert got.alpha_ == ref.alpha_
    np.testing.assert_allclose(got.predict(X), ref.predict(X), rtol=1e-4, atol=1e-4)
