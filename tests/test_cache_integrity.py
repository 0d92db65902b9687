"""Caches never give a sample another sample's, another encoder's or damaged features without an error."""

from __future__ import annotations

import logging
import shutil

import h5py
import numpy as np
import pytest

from stfeat.cache import cache_path, read_attrs, read_cache, write_cache
from stfeat.errors import InputError
from stfeat.extraction import extract_caches as extract
from stfeat.features import FeatureSet, SampleFeatures
from test_extract_fakes import fake_sample, tiny_encoder
from test_fit_support import toy_sample, write_toy_cache


def _extract(samples, cache, **kw):
    res = []
    extract(samples, encoder=tiny_encoder(), scales_um=(16, 32), cache_dir=cache, batch_size=8, num_workers=0,
            device="cpu", k_neighbors=3, on_sample=res.append, **kw)
    return res


def test_ids_that_sanitise_alike_get_their_own_cache_files(tmp_path):
    a = fake_sample(12, seed=0, sample_id="A B")
    b = fake_sample(12, seed=1, sample_id="A_B")
    res = _extract([a, b], tmp_path)
    assert [r.status for r in res] == ["written", "written"]  # was: the second "skipped", with A B's features
    fa, fb = read_cache(res[0].path, sample_id="A B"), read_cache(res[1].path, sample_id="A_B")
    assert res[0].path != res[1].path
    assert not np.array_equal(fa.features["16"], fb.features["16"])


def test_a_cache_holding_another_sample_is_refused_by_extract_and_fit(tmp_path):
    (r,) = _extract([fake_sample(12, sample_id="S1")], tmp_path)
    other = cache_path(tmp_path, "tiny-test", "S2")
    shutil.copy(r.path, other)
    with pytest.raises(InputError, match="holds the features of sample 'S1', not of 'S2'") as e:
        _extract([fake_sample(12, sample_id="S2")], tmp_path)
    assert e.value.path == other and "--overwrite" in e.value.fix
    with pytest.raises(InputError, match="holds the features of sample 'S1'"):
        SampleFeatures.from_cache(other, sample_id="S2")


def test_edited_feature_values_are_detected(tmp_path):
    s, z = toy_sample("S1", "P", n_side=4)
    p = write_toy_cache(tmp_path, s, z)
    read_cache(p)
    with h5py.File(p, "a") as f:
        f["features/112"][0, :] += 0.5
    with pytest.raises(InputError, match="does not match the checksum") as e:
        read_cache(p)
    assert e.value.path == p and "re-extract" in e.value.fix


def test_extract_writes_checksums_that_read_verifies(tmp_path):
    (r,) = _extract([fake_sample(12)], tmp_path)
    with h5py.File(r.path, "r") as f:
        assert all("blake2b" in f["features"][s].attrs for s in f["features"]) and "blake2b" in f["coords"].attrs
    with h5py.File(r.path, "a") as f:
        f["coords"][0, 0] += 1
    with pytest.raises(InputError, match="coords does not match the checksum"):
        read_cache(r.path)


def test_an_edited_config_hash_is_refused(tmp_path):
    (r,) = _extract([fake_sample(12)], tmp_path)
    with h5py.File(r.path, "a") as f:
        f.attrs["config_hash"] = "0123456789abcdef"
    with pytest.raises(InputError, match="attributes were edited"):
        read_cache(r.path)
    with pytest.raises(InputError, match="attributes were edited"):
        _extract([fake_sample(12)], tmp_path)


def _toy(tmp_path, sid, feats=None, **attrs):
    s, z = toy_sample(sid, "P" + sid, n_side=4)
    p = write_toy_cache(tmp_path, s, z)
    if feats is not None or attrs:
        d = read_cache(p)
        a = {k: v for k, v in d.attrs.items() if k not in ("config_hash",)}
        a.update(attrs)
        write_cache(p, barcodes=d.barcodes, coords=d.coords, features=feats or d.features, attrs=a,
                    neighbors=d.neighbors, neighbor_dist_um=d.neighbor_dist_um)
    return s, p


def test_nan_features_are_named(tmp_path):
    s, z = toy_sample("S1", "P", n_side=4)
    p = write_toy_cache(tmp_path, s, z)
    d = read_cache(p)
    bad = {k: v.copy() for k, v in d.features.items()}
    bad["224"][3, 1] = np.nan
    write_cache(p, barcodes=d.barcodes, coords=d.coords, features=bad, attrs=d.attrs)
    with pytest.raises(InputError, match=r"features/224 holds NaN or infinite values in 1 of 16 spots") as e:
        read_cache(p)
    assert e.value.path == p


def test_rows_that_do_not_match_the_spots_are_named(tmp_path):
    s, z = toy_sample("S1", "P", n_side=4)
    p = write_toy_cache(tmp_path, s, z)
    with h5py.File(p, "a") as f:
        v = f["features/112"][...]
        del f["features/112"]
        f["features"].create_dataset("112", data=v[:-3])
    with pytest.raises(InputError, match="has 13 rows but the file lists 16 spots"):
        read_cache(p)


def test_caches_with_the_old_visium_pixel_size_are_refused(tmp_path):
    s, p = _toy(tmp_path, "S1", um_per_px_source="spaceranger scalefactors (55 um spot / spot_diameter_fullres)")
    with pytest.raises(InputError, match="old Visium pixel size"):
        read_cache(p)
    s2, p2 = _toy(tmp_path, "S2")
    with pytest.raises(InputError, match="old Visium pixel size"):
        FeatureSet.from_caches([("S1", "P1", p, s.barcodes, None), ("S2", "P2", p2, s2.barcodes, None)])


def test_fit_refuses_caches_of_different_encoder_weights(tmp_path):
    s1, p1 = _toy(tmp_path, "S1")
    s2, p2 = _toy(tmp_path, "S2", weights_id="random:seed0")
    with pytest.raises(InputError, match="2 different encoder configurations") as e:
        FeatureSet.from_caches([("S1", "P1", p1, s1.barcodes, None), ("S2", "P2", p2, s2.barcodes, None)])
    assert "random:seed0" in e.value.problem and "toy-weights" in e.value.problem


def test_fit_uses_the_scales_every_cache_has_and_says_so(tmp_path, caplog):
    s1, p1 = _toy(tmp_path, "S1")
    d = read_cache(p1)
    s2, p2 = _toy(tmp_path, "S2")
    d2 = read_cache(p2)
    write_cache(p2, barcodes=d2.barcodes, coords=d2.coords, features={"112": d2.features["112"]},
                attrs={k: v for k, v in d2.attrs.items() if k != "scales_um"})
    assert read_attrs(p2)["scales_um"] == [112.0] and d.scales_um == [112.0, 224.0]
    with caplog.at_level(logging.WARNING):
        fs = FeatureSet.from_caches([("S1", "P1", p1, s1.barcodes, None), ("S2", "P2", p2, s2.barcodes, None)])
    assert fs.scales == ["112"]  # was: 224 from the first sample, then an error (or silently dropped)
    assert "left out ['224'] um" in caplog.text and "S2" in caplog.text
    with pytest.raises(InputError, match=r"no features at scale\(s\) \['224'\]"):
        FeatureSet.from_caches([("S1", "P1", p1, s1.barcodes, None), ("S2", "P2", p2, s2.barcodes, None)],
                               scales=[112, 224])
