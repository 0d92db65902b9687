"""FeatureSet: cache loading, barcode alignment, flat and token inputs."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.errors import InputError
from stfeat.features import FeatureSet, SampleFeatures, cache_file
from stfeat.head_inputs import flat_features, token_features
from test_fit_support import ENCODER, toy_features, toy_sample, write_toy_cache


def _load(tmp_path, **kw):
    s, z = toy_sample("S1", "P", n_side=5)
    p = write_toy_cache(tmp_path, s, z, **kw)
    assert p == cache_file(tmp_path, ENCODER, "S1")
    return s, z, p


def test_alignment_reorders_to_sample_barcodes(tmp_path):
    s, z, p = _load(tmp_path, shuffle=True)
    sf = SampleFeatures.from_cache(p, scales=[112], patient="P").aligned_to(s.barcodes, sample_path="S1.h5ad")
    expected = toy_features(z, s.coords, 0)[112.0]
    # float16 storage -> float32, rows back in the sample's order
    assert sf.features["112"].dtype == np.float32
    np.testing.assert_allclose(sf.features["112"], expected, atol=2e-2)
    np.testing.assert_array_equal(sf.coords_px, s.coords)
    # neighbour indices were remapped: each neighbour is at spot pitch (100 um) or the diagonal
    idx, d = sf.neighbor_graph(4)
    dd = np.linalg.norm(sf.coords_um[idx] - sf.coords_um[:, None], axis=-1)
    np.testing.assert_allclose(dd, d, atol=1e-3)
    assert np.allclose(dd[:, 0], 100.0)


def test_barcode_mismatch_names_both_files(tmp_path):
    s, z, p = _load(tmp_path, drop=2)
    sf = SampleFeatures.from_cache(p)
    with pytest.raises(InputError) as exc:
        sf.aligned_to(s.barcodes, sample_path="/data/S1.h5ad")
    assert str(p) in str(exc.value) and "/data/S1.h5ad" in str(exc.value)
    assert "2 sample barcodes are not in the cache" in str(exc.value)


def test_missing_scale_is_a_clear_error(tmp_path):
    _, _, p = _load(tmp_path)
    with pytest.raises(InputError, match="448"):
        SampleFeatures.from_cache(p, scales=[112, 448])


def _tiny():
    coords = np.array([[0, 0], [200, 0], [0, 200]], float)  # 0.5 um/px -> 100 um apart
    f = {"112": np.arange(6, dtype=np.float32).reshape(3, 2), "224": 10 + np.arange(6, dtype=np.float32).reshape(3, 2)}
    return SampleFeatures("t", None, np.array(["a", "b", "c"]), coords, 0.5, f)


def test_flat_and_neighbor_mean():
    sf = _tiny()
    X = flat_features(sf, ["112", "224"])
    assert X.shape == (3, 4)
    np.testing.assert_array_equal(X[1], [2, 3, 12, 13])
    Xn = flat_features(sf, ["112"], neighbor_mean=True, k=2)
    np.testing.assert_allclose(Xn[0], [0, 1, 3, 4])  # mean of spots 1 and 2
    # k larger than the sample: padded neighbours are ignored in the mean
    Xn = flat_features(sf, ["112"], neighbor_mean=True, k=4)
    np.testing.assert_allclose(Xn[0], [0, 1, 3, 4])


def test_tokens_rel_pos_and_padding():
    sf = _tiny()
    t = token_features(sf, ["112", "224"], k=3)
    assert t["X"].shape == (3, 5, 2) and t["rel_pos"].shape == (3, 5, 2)
    assert t["token_type"].tolist() == [0, 1, 2, 2, 2]
    np.testing.assert_array_equal(t["X"][0, 0], [0, 1])
    np.testing.assert_array_equal(t["X"][0, 1], [10, 11])
    # spot 0's neighbours are spots 1 and 2 at 100 um, third neighbour is padding
    assert sorted(map(tuple, t["rel_pos"][0, 2:4].tolist())) == [(0.0, 100.0), (100.0, 0.0)]
    assert t["mask"][0].tolist() == [False, False, False, False, True]
    assert np.all(t["X"][0, 4] == 0) and np.all(t["rel_pos"][0, 4] == 0)


def test_featureset_groups_and_concat(tmp_path, caplog):
    rows = []
    for sid in ("S1", "S2"):
        s, z = toy_sample(sid, None, n_side=4)
        p = write_toy_cache(tmp_path, s, z)
        rows.append((sid, None, p, s.barcodes, sid))
    fs = FeatureSet.from_caches(rows)
    assert fs.scales == ["112", "224"] and fs.dim == 16
    assert fs.group_kind == "section" and "grouped by section" in caplog.text
    assert fs.group_of("S2") == "S2"
    assert fs.flat(["S1", "S2"]).shape == (32, 32)
    assert fs.flat(["S2"], neighbor_mean=True, k=3).shape == (16, 64)
    t = fs.tokens(["S1", "S2"], k=3)
    assert t["X"].shape == (32, 5, 16)
    assert list(fs.spot_samples(["S2", "S1"])[:16]) == ["S2"] * 16
