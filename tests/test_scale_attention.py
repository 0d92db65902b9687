"""Stage two at scale (issue 13): attention from token chunks of lazy features; Model.predict on a lazy sample."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.features import FeatureSet, SampleFeatures, cache_file
from test_fit_support import ENCODER, toy_dataset, toy_sample, write_toy_cache

GENES = [f"G{i:03d}" for i in range(8)]
T = "log1p_cp10k"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_attn")
    return root / "cache", toy_dataset(root / "cache")


def _load(toy, lazy):
    cache, samples = toy
    return FeatureSet.load(samples, encoder=ENCODER, cache_dir=cache, lazy=lazy)


def _head(**kw):
    from stfeat.heads.attention import AttentionHead

    return AttentionHead(**{"d_model": 16, "n_heads": 2, "max_epochs": 8, "patience": 3, "batch_size": 32,
                            "device": "cpu", "n_jobs": 1, **kw})


def test_token_chunks_equal_token_features_rows(toy, tmp_path):
    from stfeat.head_inputs import token_features, token_rows

    fs, mem = _load(toy, True), _load(toy, False)
    for sid in ("A1", "C1"):
        ref = token_features(mem.samples[sid], mem.scales, k=4, neighbor_scale="224")
        n = mem.samples[sid].n_spots
        parts = [token_rows(fs.samples[sid], fs.scales, a, a + 17, k=4, neighbor_scale="224") for a in range(0, n, 17)]
        for key in ("X", "rel_pos", "mask"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), ref[key])
        np.testing.assert_array_equal(parts[0]["token_type"], ref["token_type"])
    # a cache whose rows are shuffled relative to the sample (the lazy view reorders, neighbours included)
    s, z = toy_sample("S1", "P", n_side=8)
    write_toy_cache(tmp_path, s, z, shuffle=True)
    lfs = FeatureSet.load([s], encoder=ENCODER, cache_dir=tmp_path, lazy=True)
    lz = lfs.samples["S1"]
    ref = token_features(FeatureSet.load([s], encoder=ENCODER, cache_dir=tmp_path, lazy=False).samples["S1"],
                         lfs.scales, k=6)
    got = [token_rows(lz, lfs.scales, a, a + 10, k=6) for a in range(0, lz.n_spots, 10)]
    assert lz.is_lazy
    for key in ("X", "rel_pos", "mask"):
        np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), ref[key])


def test_attention_trains_from_token_chunks_close_to_the_in_memory_fit(toy):
    from stfeat.evaluate import pearson_per_gene
    from stfeat.heads._attn_chunks import fit_attention_featureset

    fs, mem = _load(toy, True), _load(toy, False)
    train, test = ["A1", "A2", "B1", "B2"], ["C1"]
    groups = {s: s[0] for s in fs.sample_ids}
    a = fit_attention_featureset(_head(), fs, train, GENES, T, groups, k=4, chunk_rows=50)
    b = fit_attention_featureset(_head(), fs, train, GENES, T, groups, k=4, chunk_rows=50)
    tok = mem.tokens(test, k=4)
    P = a.predict(tok["X"], tok["rel_pos"], tok["token_type"], ~tok["mask"])
    np.testing.assert_array_equal(P, b.predict(tok["X"], tok["rel_pos"], tok["token_type"], ~tok["mask"]))
    assert a.n_own_ == 2 and a.baseline_ is not None and len(a.history_) >= 2
    # the in-memory fit on the same samples
    tr = mem.tokens(train, k=4)
    Y = np.concatenate([mem.targets(s, GENES, T) for s in train])
    ref = _head().fit(tr["X"], Y, tr["rel_pos"], tr["token_type"], ~tr["mask"],
                      groups=np.concatenate([[groups[s]] * mem.samples[s].n_spots for s in train]))
    Pref = ref.predict(tok["X"], tok["rel_pos"], tok["token_type"], ~tok["mask"])
    Yte = mem.targets("C1", GENES, T)
    r, rref = np.nanmean(pearson_per_gene(Yte, P)), np.nanmean(pearson_per_gene(Yte, Pref))
    assert r > 0.3 and abs(r - rref) < 0.05, (r, rref)
    np.testing.assert_allclose(a.tok_mean_, ref.tok_mean_, rtol=1e-4, atol=1e-4)
    # predict_chunks streams token chunks and gives the whole-tensor prediction
    from stfeat.suffstats_cache import predict_chunks

    layout = {"kind": "tokens", "scales": fs.scales, "k_neighbors": 4, "neighbor_scale": None}
    np.testing.assert_allclose(predict_chunks(a, fs, test, layout, chunk_rows=13), P, rtol=1e-5, atol=1e-5)


def test_cross_validate_and_fit_attention_on_lazy_features_use_chunks(toy, monkeypatch):
    import stfeat.heads._attn_chunks as ac
    from stfeat.crossval import cross_validate
    from stfeat.fitting import fit

    calls = []
    real = ac.fit_attention_featureset
    monkeypatch.setattr(ac, "fit_attention_featureset", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    params = {"d_model": 8, "n_heads": 2, "max_epochs": 2, "device": "cpu", "n_jobs": 1}
    cv = cross_validate(_load(toy, True), head="attention", genes="hvg:5", head_params=params, k_neighbors=4)
    assert len(calls) == len(cv.rows) == 3
    assert all(np.isfinite(P).all() for _, _, P, _ in cv.items)
    model = fit(_load(toy, True), head="attention", genes="hvg:5", head_params=params, k_neighbors=4)
    assert len(calls) == 4 and model.estimator.module_ is not None


def _model_and_sample(toy, head, params=None):
    from stfeat.fitting import fit

    cache, samples = toy
    model = fit(_load(toy, False), head=head, genes="hvg:6", head_params=params, k_neighbors=4)
    path = cache_file(cache, ENCODER, "C1")
    lazy = SampleFeatures.from_cache(path, scales=model.layout["scales"], sample_id="C1", lazy=True)
    mem = SampleFeatures.from_cache(path, scales=model.layout["scales"], sample_id="C1", lazy=False)
    return model, lazy, mem


def test_model_predict_on_a_lazy_sample_streams_and_equals_the_in_memory_path(toy, monkeypatch):
    import stfeat.suffstats_cache as ssc

    model, lazy, mem = _model_and_sample(toy, "ridge")
    calls = []
    real = ssc.predict_sample
    monkeypatch.setattr(ssc, "predict_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    P = model.predict_features(lazy)
    assert calls and lazy.is_lazy
    ref = model.predict_features(mem)
    np.testing.assert_allclose(P, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())  # float32 products
    assert len(calls) == 1  # the in-memory sample does not stream
    # small chunks: the float64 product does not depend on the batching
    np.testing.assert_allclose(real(model.estimator, lazy, model.layout, chunk_rows=7),
                               real(model.estimator, mem, model.layout), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head", ["mlp", "attention"])
def test_model_predict_on_a_lazy_sample_runs_for_other_heads(toy, head):
    params = {"max_epochs": 2, "device": "cpu", "n_jobs": 1} | ({"d_model": 8, "n_heads": 2} if head == "attention"
                                                                  else {"hidden": 8})
    model, lazy, mem = _model_and_sample(toy, head, params)
    P = model.predict_features(lazy)
    assert P.shape == (lazy.n_spots, len(model.genes)) and np.isfinite(P).all()
    np.testing.assert_allclose(P, model.predict_features(mem), rtol=1e-5, atol=1e-5)


def test_model_predict_reads_a_sample_over_the_threshold_lazily(toy, monkeypatch):
    import stfeat.suffstats_cache as ssc

    cache, samples = toy
    model, _, _ = _model_and_sample(toy, "ridge")
    new = [s for s in samples if s.sample_id == "C1"][0]
    ref = model.predict(new, cache_dir=cache)
    calls = []
    real = ssc.predict_sample
    monkeypatch.setattr(ssc, "predict_sample",
                        lambda est, sf, *a, **k: calls.append(sf.is_lazy) or real(est, sf, *a, **k))
    monkeypatch.setenv("STFEAT_LAZY_BYTES", "1")
    got = model.predict(new, cache_dir=cache)
    assert calls == [True]
    np.testing.assert_allclose(np.asarray(got.X), np.asarray(ref.X), rtol=1e-5, atol=1e-5 * np.abs(ref.X).max())
