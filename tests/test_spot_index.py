"""The FAISS index of every cache's embeddings, and similar-spot search across a cohort (issue 9)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stfeat.errors import InputError


def _cache(path, sid, X, *, index=True):
    from stfeat.cache import write_cache

    n = len(X)
    coords = np.c_[np.arange(n) % 10, np.arange(n) // 10].astype(float) * 100
    return write_cache(path / f"{sid}.h5", barcodes=[f"{sid}_{i}" for i in range(n)], coords=coords,
                       features={112: X, 224: X[:, ::-1].copy()}, attrs={"encoder": "toy", "sample_id": sid,
                                                                        "um_per_px": 0.5},
                       dtype="float32", index=index)


def _clusters(n, d=12, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    lab = rng.integers(0, k, n)
    return (centres[lab] + rng.normal(size=(n, d)) * 0.3).astype(np.float32), lab


def test_every_cache_holds_an_index_and_search_agrees_with_brute_force(tmp_path):
    import stfeat as st

    X1, _ = _clusters(60, seed=0)
    X2, _ = _clusters(40, seed=1)
    p1, p2 = _cache(tmp_path, "S1", X1), _cache(tmp_path, "S2", X2)
    with h5py.File(p1) as f:
        assert set(f["faiss"]) == {"112", "224"} and f["faiss"]["112"].dtype == np.uint8
    hits = st.similar_spots([p1, p2], [("S1", "S1_3"), ("S2", "S2_7")], k=5)
    assert list(hits.columns) == ["query", "rank", "sample_id", "barcode", "similarity"]
    assert (hits.groupby("query").size() == 5).all()
    # brute force over both samples (cosine), the query itself excluded
    allX = np.concatenate([X1, X2])
    keys = [f"S1_{i}" for i in range(60)] + [f"S2_{i}" for i in range(40)]
    An = allX / np.linalg.norm(allX, axis=1, keepdims=True)
    for qi, row in enumerate([3, 60 + 7]):
        sims = An @ An[row]
        sims[row] = -np.inf
        want = [keys[j] for j in np.argsort(-sims, kind="stable")[:5]]
        got = hits[hits["query"] == qi]
        assert list(got["barcode"]) == want
        np.testing.assert_allclose(got["similarity"], np.sort(sims)[::-1][:5], atol=2e-3)
    # a vector query, at the other scale; the query spot itself is then a hit
    v = st.similar_spots([p1], X1[[3], ::-1], scale=224, k=1)
    assert v["barcode"].tolist() == ["S1_3"] and v["similarity"].iloc[0] == pytest.approx(1.0, abs=2e-3)


def test_large_caches_get_an_ivf_index_that_finds_the_same_cluster(tmp_path):
    import faiss

    from stfeat.spot_index import build_index

    X, lab = _clusters(3000, seed=2)
    index, info = build_index(X, ivf_threshold=1000)
    assert info["kind"] == "ivf-sq8" and info["nlist"] == int(4 * np.sqrt(3000)) and index.nprobe == info["nprobe"]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    _, rows = index.search(Xn[:50], 6)
    assert (lab[rows[:, 1:]] == lab[:50, None]).mean() > 0.99  # neighbours from the query's own cluster
    blob = faiss.serialize_index(index)
    assert faiss.deserialize_index(blob).ntotal == 3000


def test_featureset_search_and_named_errors(tmp_path):
    import stfeat as st
    from stfeat.cache import describe_cache
    from stfeat.features import SampleFeatures, FeatureSet

    X, _ = _clusters(30)
    p = _cache(tmp_path, "S1", X)
    fs = FeatureSet([SampleFeatures.from_cache(p)])
    assert len(st.similar_spots(fs, ("S1", "S1_0"), k=3)) == 3
    assert "faiss/112" in describe_cache(p)
    with pytest.raises(InputError, match="barcode"):
        st.similar_spots(fs, ("S1", "nope"))
    with pytest.raises(InputError, match="not among"):
        st.similar_spots(fs, ("S9", "S1_0"))
    old = _cache(tmp_path / "old", "S2", X, index=False)
    with pytest.raises(InputError, match="--overwrite"):
        st.similar_spots([old], ("S2", "S2_0"))
    with pytest.raises(InputError, match="-d"):
        st.similar_spots([p], np.ones((1, 5), np.float32))


def test_extraction_writes_the_index(tmp_path):
    from stfeat.extraction import extract_caches
    from stfeat.spot_index import load_index
    from test_extract_fakes import fake_sample, tiny_encoder

    (p,) = extract_caches([fake_sample(20)], encoder=tiny_encoder(), cache_dir=tmp_path, scales_um=(16,),
                          num_workers=0, device="cpu")
    index = load_index(p, 16, gpu=False)
    assert index.ntotal == 20 and index.d == 16
