"""Patch tokens in the cache (issue 11, M2OST's input): capture, extraction, layout, attention head."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stfeat.errors import InputError
from stfeat.views import ViewSpec
from test_extract_fakes import fake_sample
from test_fit_support import ENCODER, toy_dataset


def _tiny(name):
    from stfeat.encoders import create_encoder

    return create_encoder(name, tiny=True, pretrained=False)


@pytest.mark.parametrize("name", ["densenet121", "uni"])
def test_capture_equals_the_pooled_map_of_the_same_forward(name):
    import torch

    from stfeat.dense import map_model
    from stfeat.patch_tokens import capture

    enc = _tiny(name)
    px = enc.spec.input_px
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, px, px, 3), dtype=np.uint8))
    ref_pooled = enc(x)
    with capture(enc, 2) as take:
        pooled = enc(x)
        tok = take()
    torch.testing.assert_close(pooled, ref_pooled)  # the pooled vector is unchanged by the capture
    mm = map_model(enc)
    target = mm.inner if mm.kind == "vit" else enc.model
    assert "forward_features" not in vars(target)  # the model is restored
    with torch.inference_mode():  # reference: the map by hand, pooled to 2 x 2 (row-major cells)
        t = target.forward_features(enc.preprocess(x)).float()
    if mm.kind == "vit":
        p = t[:, mm.prefix:]
        g = int(np.sqrt(p.shape[1]))
        t = p.reshape(len(p), g, g, -1).permute(0, 3, 1, 2)
    ref = torch.nn.functional.adaptive_avg_pool2d(t, 2).permute(0, 2, 3, 1).reshape(len(t), 4, -1)
    assert tok.shape == (3, 4, t.shape[1])
    torch.testing.assert_close(tok, ref, rtol=1e-5, atol=1e-5)


def test_extract_stores_tokens_beside_unchanged_features(tmp_path):
    from stfeat.cache import read_attrs, read_cache
    from stfeat.extraction import extract_caches
    from stfeat.patch_tokens import cache_bytes_per_spot, read_tokens

    enc = _tiny("densenet121")
    s = fake_sample(12)
    kw = dict(cache_dir=tmp_path, scales_um=(16, 32), batch_size=5, num_workers=0, device="cpu", dtype="float32")
    (plain,) = extract_caches([s], encoder=enc, **kw)
    (tok,) = extract_caches([s], encoder=enc, tokens=2, **kw)
    assert plain.parent.name == "densenet121" and tok.parent.name == "densenet121+tok2"
    a = read_attrs(tok)
    assert a["tokens_grid"] == 2 and a["tokens_source"] == "cnn feature map" and a["extraction_mode"] == "crop"
    assert a["config_hash"] != read_attrs(plain)["config_hash"]
    for sc in ("16", "32"):
        np.testing.assert_array_equal(read_cache(tok).features[sc], read_cache(plain).features[sc])
        t = read_tokens(tok, sc)
        assert t.shape == (12, 4, int(a["tokens_dim"])) and np.isfinite(t).all()
        with h5py.File(tok) as f:
            assert f["tokens"][sc].dtype == np.float16
        # a CNN's pooled vector is the mean of its map: the 2 x 2 cells average back to it (7 x 7 map: the
        # adaptive cells overlap by one row/column, so only approximately)
        r = np.corrcoef(t.mean(1).ravel(), read_cache(plain).features[sc].ravel())[0, 1]
        assert r > 0.98
    b = cache_bytes_per_spot(tok)
    assert b["tokens"] == pytest.approx(2 * b["features"], rel=0.01)  # 4 float16 cells vs one float32 row
    assert cache_bytes_per_spot(plain)["tokens"] == 0


def test_tokens_are_refused_where_they_cannot_be_right(tmp_path):
    from stfeat.extraction import extract_caches
    from stfeat.patch_tokens import capture

    with pytest.raises(InputError, match="tta"):
        ViewSpec(tta="d8", tokens=2)
    with pytest.raises(InputError, match="grid size"):
        ViewSpec(tokens=-1)
    with pytest.raises(InputError, match="dense"):
        extract_caches([fake_sample(6)], encoder=_tiny("densenet121"), cache_dir=tmp_path, scales_um=(16,),
                       tokens=2, mode="dense", device="cpu", num_workers=0)
    from stfeat.encoders import create_encoder

    with pytest.raises(InputError, match="--tokens"):
        with capture(create_encoder("classical"), 2):
            pass


def test_variant_names_carry_the_grid():
    base, v = ViewSpec.from_variant("uni+macenko+tok4")
    assert base == "uni" and v.tokens == 4 and v.stain_norm == "macenko" and not v.plain and not v.plain_pixels
    assert ViewSpec(tokens=4).suffix == "+tok4" and ViewSpec(tokens=4).plain_pixels
    assert ViewSpec(tokens=4).identity()["tokens"] == 4 and ViewSpec().identity() is None
    assert "tokens" not in ViewSpec(stain_norm="macenko").identity()  # older variant identities unchanged
    from stfeat.cache import encoder_tag

    assert encoder_tag("densenet121+tok4") == "densenet121+tok4"


def _token_dataset(tmp_path, grid=2):
    """The toy caches of test_fit_support with patch tokens whose top-left cell carries the signal."""
    from stfeat.features import FeatureSet
    from stfeat.patch_tokens import add_tokens

    enc = ENCODER + f"+tok{grid}"
    samples = toy_dataset(tmp_path, encoder=enc)
    rng = np.random.default_rng(0)
    for p in sorted((tmp_path / enc).glob("*.h5")):
        with h5py.File(p, "a") as f:
            for sc in f["features"]:
                x = f["features"][sc][...].astype(np.float32)
                n, d = x.shape
                t = rng.normal(size=(n, grid * grid, d)).astype(np.float32)
                t[:, 0] += x
                add_tokens(f, sc, n=n, grid=grid, dim=d)
                f["tokens"][sc][...] = t.astype(np.float16)
            f.attrs["tokens_grid"], f.attrs["tokens_dim"] = grid, d
    return samples, FeatureSet.load(samples, encoder=enc, cache_dir=tmp_path)


def test_attention_attends_to_patch_tokens_through_cross_validate_and_predict(tmp_path):
    from stfeat.crossval import cross_validate
    from stfeat.estimators import sample_inputs
    from stfeat.fitting import fit
    from stfeat.heads.attention import AttentionHead

    samples, fs = _token_dataset(tmp_path)
    head = AttentionHead(d_model=16, n_heads=2, max_epochs=3, device="cpu", n_jobs=1, patch_tokens=True)
    cv = cross_validate(fs, head=head, genes="hvg:5", conformal=None, standardize="slide")
    assert cv.layout["patch_tokens"] and cv.layout["tokens_grid"] == 2
    assert all(np.isfinite(P).all() for _, _, P, _ in cv.items)
    model = fit(fs, head=head, genes="hvg:5", k_neighbors=4)
    sf = fs.samples["C1"]
    t = sample_inputs(sf, model.layout)
    S = len(fs.scales)
    assert t["X"].shape[1] == S + S * 4 + 4  # own scales, 4 cells per scale, 4 neighbours
    assert list(t["token_type"]) == [0, 1] + [2] * 4 + [3] * 4 + [4] * 4
    # cell offsets: the 112 um field of view's top-left cell centre is 28 um left of and above the spot
    np.testing.assert_allclose(t["rel_pos"][0, S], [-28.0, -28.0])
    assert model.predict_features(sf).shape == (sf.n_spots, 5)
    # a cache without tokens is a named error at fit and at predict
    plain = toy_dataset(tmp_path / "plain")
    from stfeat.features import FeatureSet

    fs_plain = FeatureSet.load(plain, encoder=ENCODER, cache_dir=tmp_path / "plain")
    with pytest.raises(InputError, match="--tokens"):
        cross_validate(fs_plain, head=head, genes="hvg:5", conformal=None)
    with pytest.raises(InputError, match="--tokens"):
        model.predict_features(fs_plain.samples["C1"])
    with pytest.raises(ValueError, match="mode='query'"):
        cross_validate(fs, head=AttentionHead(mode="nh2st", patch_tokens=True, max_epochs=1, device="cpu"),
                       genes="hvg:5", conformal=None)


def test_token_rows_follow_the_sample_order(tmp_path):
    from stfeat.patch_tokens import read_tokens, sample_tokens

    _, fs = _token_dataset(tmp_path)
    sf = fs.samples["A1"]
    order = np.random.default_rng(1).permutation(sf.n_spots)
    moved = sf.aligned_to(sf.barcodes[order])
    np.testing.assert_array_equal(sample_tokens(moved, "112"), read_tokens(sf.source, "112")[order])
