"""Per-slide feature standardisation (issue 10): FeatureSet option, fit/cross_validate, Model and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest

import stfeat as st
from stfeat.errors import InputError
from stfeat.features import FeatureSet, SampleFeatures, cache_file
from test_fit_support import ENCODER, UM_PER_PX, toy_dataset, toy_features, toy_sample


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("std")
    samples = toy_dataset(tmp / "cache", layout=(("A", 1), ("B", 1), ("C", 1)), n_side=6)
    return tmp, samples


def _load(tmp, samples, **kw) -> FeatureSet:
    return FeatureSet.load(samples, encoder=ENCODER, cache_dir=tmp / "cache", **kw)


def _write_cache(cache_dir, sample, feats, seed=0):
    from stfeat.cache import cache_path, encoder_tag, write_cache
    from stfeat.neighbors import spatial_neighbors

    idx, dist = spatial_neighbors(sample.coords * UM_PER_PX, 6)
    return write_cache(cache_path(cache_dir, encoder_tag(ENCODER), sample.sample_id), barcodes=sample.barcodes,
                       coords=sample.coords, features=feats, neighbors=idx, neighbor_dist_um=dist,
                       attrs={"encoder": ENCODER, "sample_id": sample.sample_id, "patient": sample.patient or "",
                              "um_per_px": UM_PER_PX, "weights_id": "toy-weights"})


def test_flat_and_tokens_are_standardised_per_sample(data):
    tmp, samples = data
    fs = _load(tmp, samples, standardize="slide")
    assert fs.standardize == "slide" and fs.provenance["standardize"] == "slide"
    raw = fs.with_standardize("none")
    assert raw.standardize == "none" and raw.samples["A1"] is fs.samples["A1"]  # shared, not copied
    for sid in fs.sample_ids:
        X = fs.flat([sid])
        np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(X.std(0), 1.0, atol=1e-4)
        assert not np.allclose(raw.flat([sid]).mean(0), 0.0, atol=1e-3)  # the raw features are not centred
        t = fs.tokens([sid], k=3)
        own = t["X"][:, :len(fs.scales)]  # per scale, statistics over the sample's spots
        np.testing.assert_allclose(own.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(own.std(0), 1.0, atol=1e-4)
    # both samples pooled: each has mean 0, so the pool does too, whatever the samples' raw offsets
    np.testing.assert_allclose(fs.flat(fs.sample_ids).mean(0), 0.0, atol=1e-5)


def test_constant_feature_becomes_zero_and_bad_mode_is_an_input_error():
    f = np.c_[np.full(4, 3.0), np.arange(4.0)].astype(np.float32)
    sf = SampleFeatures("S", None, np.array(list("abcd")), np.zeros((4, 2)), 1.0, {"112": f})
    X = FeatureSet([sf], standardize="slide").flat(["S"])
    assert np.all(X[:, 0] == 0.0) and np.isfinite(X).all()
    np.testing.assert_allclose(X[:, 1].std(), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="standardize"):
        FeatureSet([sf], standardize="patient")
    with pytest.raises(InputError, match="slide"):
        FeatureSet([sf]).with_standardize("zscore")


def test_model_is_invariant_to_per_feature_affine_shift_and_predict_applies_it(data, tmp_path):
    tmp, samples = data
    fs = _load(tmp, samples)  # standardize given to fit, not to the FeatureSet: one name everywhere
    model = st.fit(fs, head="ridge", genes="hvg:8", standardize="slide")
    assert model.layout["standardize"] == "slide"
    new, z = toy_sample("N1", "N", n_side=5, seed=3)
    feats = {f"{k:g}": v for k, v in toy_features(z, new.coords, 5).items()}
    rng = np.random.default_rng(0)
    shifted = {k: (v * rng.uniform(0.5, 4.0, v.shape[1]) + rng.normal(0, 20, v.shape[1])).astype(np.float32)
               for k, v in feats.items()}
    kw = dict(patient="N", barcodes=new.barcodes, coords_px=new.coords, um_per_px=UM_PER_PX)
    sf_a = SampleFeatures("N1", features=feats, **kw)
    sf_b = SampleFeatures("N1", features=shifted, **kw)
    Pa, Pb = model.predict_features(sf_a), model.predict_features(sf_b)
    np.testing.assert_allclose(Pa, Pb, atol=2e-4)
    assert Pa.std(0).max() > 0.05  # the predictions are not a trivial constant
    # without standardisation the same shift changes the predictions
    plain = st.fit(fs, head="ridge", genes="hvg:8")
    assert plain.layout["standardize"] == "none"
    assert np.abs(plain.predict_features(sf_a) - plain.predict_features(sf_b)).max() > 0.1
    # the saved model records the mode; st.predict on the shifted cache standardises with its own statistics
    d = model.save(tmp_path / "m")
    assert json.loads((d / "model.json").read_text())["standardize"] == "slide"
    cdir = tmp_path / "cache"
    _write_cache(cdir, new, {float(k): v for k, v in shifted.items()})
    assert cache_file(cdir, ENCODER, "N1").exists()
    a = st.predict(d, new, cache_dir=cdir)
    np.testing.assert_allclose(a.X, Pa, atol=0.05)  # the cache stores float16
    assert a.uns["stfeat"]["standardize"] == "slide"
    # by hand: the head applied to the sample's own z-scored features, as cached
    cached = SampleFeatures.from_cache(cache_file(cdir, ENCODER, "N1")).aligned_to(new.barcodes).features
    Xh = np.concatenate([(v - v.mean(0, dtype=np.float64)) / v.std(0, dtype=np.float64)
                         for v in cached.values()], axis=1)
    np.testing.assert_allclose(a.X, np.maximum(model.estimator.predict(Xh), 0), atol=2e-4)
    # a grid prediction standardises with the measured spots' statistics when their features are cached
    from stfeat.prediction import _spot_stats

    stats = _spot_stats(st.Model.load(d), new, cdir)
    for k, v in cached.items():
        np.testing.assert_allclose(stats[k][0], v.mean(0, dtype=np.float64), rtol=1e-6)
        np.testing.assert_allclose(stats[k][1], v.std(0, dtype=np.float64), rtol=1e-5)
    assert _spot_stats(st.Model.load(d), new, tmp_path / "empty") is None  # not cached: the grid's own


def test_fit_option_standardize_is_checked():
    from stfeat import options as O

    opts = O.build(O.FitOptions, {"samples": "d", "encoder": ["toy"], "standardize": "none"})
    assert O.library_kwargs(opts)["standardize"] == "none"
    # the default is the variant that did best across patients (docs/results.md)
    assert O.default_of(O.FitOptions, "standardize") == "slide"
    with pytest.raises(O.OptionError, match="standardize"):
        O.build(O.FitOptions, {"samples": "d", "encoder": ["toy"], "standardize": "zscore"})


def test_cross_validate_and_fit_report_record_standardize(data, tmp_path):
    tmp, samples = data
    cv = st.cross_validate(_load(tmp, samples), head="ridge", genes="hvg:8", standardize="slide")
    assert cv.layout["standardize"] == "slide" and all(r["standardize"] == "slide" for r in cv.rows)
    from stfeat.fitting import fit_report

    res = fit_report(samples, encoder=ENCODER, cache_dir=tmp / "cache", head=["ridge"], genes="hvg:8",
                     out_dir=tmp_path / "out", plots=False, standardize="slide")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["standardize"] == "slide" and all(r["standardize"] == "slide" for r in m["results"])
    import pandas as pd

    assert set(pd.read_csv(tmp_path / "out" / "metrics.csv")["standardize"]) == {"slide"}
    assert st.Model.load(tmp_path / "out").layout["standardize"] == "slide"
    assert res.models[next(iter(res.models))].layout["standardize"] == "slide"
    with pytest.raises(InputError, match="standardize"):
        fit_report(samples, encoder=ENCODER, cache_dir=tmp / "cache", head=["ridge"], out_dir=tmp_path / "o2",
                   standardize="yes")
