"""What the encoder sees (stfeat.views): TTA, stain normalisation, background fill, tissue fraction, cache keys."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from stfeat import cache as C
from stfeat import views as V
from stfeat.errors import InputError
from stfeat.extraction import extract_caches, extract_points
from stfeat.identity import _spec_subset, encoder_identity
from stfeat.views import ViewSpec

from test_extract_fakes import UM_PER_PX, FakeSlide, fake_image, fake_sample, tiny_encoder

PX = 32  # the tiny encoder's input


class ConstSlide:
    """A slide whose every crop is the same given image (for exact-symmetry tests)."""

    def __init__(self, crop: np.ndarray) -> None:
        self.crop = crop
        self.um_per_px = UM_PER_PX

    def read_regions(self, centres_px, field_um, out_px, *, um_per_px=None):
        n = len(np.asarray(centres_px).reshape(-1, 2))
        return np.repeat(self.crop[None], n, 0), np.zeros(n, bool)


def _radial(px: int = PX) -> np.ndarray:
    c = (px - 1) / 2
    y, x = np.mgrid[:px, :px]
    r = np.hypot(x - c, y - c)
    rgb = np.stack([128 + 100 * np.cos(r / 2), 128 + 80 * np.sin(r / 3), 200 - 5 * r], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _points(slide, enc, views, n=3):
    return extract_points(slide, np.full((n, 2), 50.0), encoder=enc, scales_um=(16,), um_per_px=UM_PER_PX,
                          batch_size=2, device="cpu", views=views)["16"]


def _run(samples, cache, **kw):
    results = []
    kw.setdefault("encoder", tiny_encoder())
    paths = extract_caches(samples, cache_dir=cache, scales_um=(16, 32), batch_size=4, num_workers=0, device="cpu",
                           on_sample=results.append, **kw)
    return paths, results


# ------------------------------------------------------------------------------------------- TTA
def test_d8_of_a_rotation_invariant_image_equals_the_plain_view():
    enc = tiny_encoder()
    img = _radial()
    assert all(np.array_equal(V.d8(img, v), img) for v in range(8))
    plain = _points(ConstSlide(img), enc, ViewSpec())
    tta = _points(ConstSlide(img), enc, ViewSpec(tta="d8"))
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-5)
    # ... while the encoder itself is not invariant: a non-symmetric crop changes under a rotation
    tex = fake_image(PX, PX, seed=3)
    assert not np.allclose(_points(ConstSlide(tex), enc, ViewSpec(), 1),
                           _points(ConstSlide(np.rot90(tex).copy()), enc, ViewSpec(), 1), atol=1e-3)


def test_d8_embedding_is_the_mean_over_the_eight_transformed_crops():
    enc = tiny_encoder()
    tex = fake_image(PX, PX, seed=5)
    tta = _points(ConstSlide(tex), enc, ViewSpec(tta="d8"), 2)
    views = np.stack([np.ascontiguousarray(V.d8(tex, v)) for v in range(8)])
    with torch.no_grad():
        want = enc(torch.from_numpy(views)).numpy().mean(0)
    np.testing.assert_allclose(tta[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tta[1], want, rtol=1e-5, atol=1e-5)


def test_hed_jitter_is_seeded_by_spot_so_batching_does_not_change_it(tmp_path):
    s = fake_sample(5)
    a = extract_caches([s], encoder=tiny_encoder(), cache_dir=tmp_path / "a", scales_um=(16,), batch_size=2,
                       num_workers=0, device="cpu", tta="d8", tta_hed_jitter=0.1)
    b = extract_caches([s], encoder=tiny_encoder(), cache_dir=tmp_path / "b", scales_um=(16,), batch_size=3,
                       num_workers=0, device="cpu", tta="d8", tta_hed_jitter=0.1)
    fa, fb = C.read_cache(a[0]).features["16"], C.read_cache(b[0]).features["16"]
    np.testing.assert_array_equal(fa, fb)
    plain = extract_caches([s], encoder=tiny_encoder(), cache_dir=tmp_path / "c", scales_um=(16,), batch_size=5,
                           num_workers=0, device="cpu", tta="d8")
    assert not np.allclose(C.read_cache(plain[0]).features["16"], fa)  # the jitter did something


# ------------------------------------------------------------------------------------------- stain
def _he_tile(he: np.ndarray, conc: np.ndarray, px: int = 64) -> np.ndarray:
    he = he / np.linalg.norm(he, axis=0)
    return np.clip(np.rint((240 * np.exp(-he @ conc)).T.reshape(px, px, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_normalisation_maps_a_stain_shifted_tile_back(method):
    rng = np.random.default_rng(1)
    conc = rng.uniform(0, 1, (2, 64 * 64)) * np.array([[1.5], [0.9]])
    a = _he_tile(V.MACENKO_HE_REF, conc)
    b = _he_tile(np.array([[0.65, 0.15], [0.70, 0.85], [0.30, 0.50]]), conc * 1.4)  # other stains, darker
    before = np.abs(a.astype(float) - b).mean()
    norm = V._normaliser(method, "", "")
    na, nb = V.normalise(norm, a), V.normalise(norm, b)
    after = np.abs(na.astype(float) - nb).mean()
    assert before > 15 and after < 3, (before, after)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_crop_without_tissue_is_left_unchanged(method):
    norm = V._normaliser(method, "", "")
    white = np.full((PX, PX, 3), 255, np.uint8)
    assert np.array_equal(V.normalise(norm, white), white)
    black = np.zeros((1, 1, PX, PX, 3), np.uint8)  # under MIN_TISSUE: not normalised at all
    out, tissue = ViewSpec(stain_norm=method).apply(black, 0)
    assert np.array_equal(out, black) and tissue[0, 0] == 0


def test_a_reference_image_sets_the_digest_and_is_required_by_name(tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(V.reference_tile()).save(ref)
    spec = ViewSpec.build(stain_norm="macenko", stain_reference=ref)
    assert len(spec.reference_digest) == 10 and spec.suffix == f"+macenko-ref{spec.reference_digest}"
    base, named = ViewSpec.from_variant("tiny-test" + spec.suffix)
    assert base == "tiny-test" and named.identity() == spec.identity()
    with pytest.raises(InputError, match="stain_reference"):
        V.resolve("densenet121" + spec.suffix)
    assert V.resolve("densenet121" + spec.suffix, stain_reference=ref)[1] == spec
    with pytest.raises(InputError, match="does not exist"):
        ViewSpec.build(stain_norm="macenko", stain_reference=tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------- background
def test_black_background_is_filled_white_and_tissue_fraction_recorded(tmp_path):
    crop = np.full((1, 1, PX, PX, 3), (180, 90, 160), np.uint8)
    crop[..., : PX // 2, :] = (5, 5, 5)  # left half: black scan background
    out, tissue = ViewSpec(background="fill").apply(crop, 0)
    assert (out[0, 0, :, : PX // 2] == 255).all() and (out[0, 0, :, PX // 2:] == (180, 90, 160)).all()
    assert tissue[0, 0] == pytest.approx(0.5)
    kept, t2 = ViewSpec().apply(crop, 0)
    assert kept is crop and t2[0, 0] == pytest.approx(0.5)

    img = np.full((200, 200, 3), (180, 90, 160), np.uint8)
    img[:, :100] = 0
    s = fake_sample(4, image=img)
    s.adata.obsm["spatial"] = np.array([[100.0, 100], [150, 100], [40, 100], [100, 100]])
    for kw in ({}, {"background": "fill"}):
        (path,), _ = _run([s], tmp_path / str(len(kw)), k_neighbors=0, **kw)
        tf = C.read_cache(path).tissue_fraction
        assert set(tf) == {"16", "32"}
        np.testing.assert_allclose(tf["32"], [0.5, 1.0, 0.0, 0.5], atol=0.05)
    from stfeat.features import SampleFeatures

    assert SampleFeatures.from_cache(path).tissue_fraction["16"].shape == (4,)


# ------------------------------------------------------------------------------------------- cache key
def test_plain_and_d8_go_to_two_folders_plain_hash_unchanged(tmp_path):
    enc = tiny_encoder()
    s = fake_sample(6)
    (plain,), (rp,) = _run([s], tmp_path, encoder=enc)
    (tta,), (rt,) = _run([s], tmp_path, encoder=enc, tta="d8", stain_norm="reinhard", background="fill")
    assert plain == tmp_path / "tiny-test" / "S1.h5"
    assert tta == tmp_path / "tiny-test+reinhard+d8+bgfill" / "S1.h5"
    assert rp.n_views == 1 and rt.n_views == 8 and "x8 views" in rt.line() and "views" not in rp.line()
    # the plain identity is exactly what it was before views existed
    old = {"encoder": "tiny-test", "spec": _spec_subset(enc.spec), "weights_id": "tiny-seed0"}
    pa, ta = C.read_attrs(plain), C.read_attrs(tta)
    assert encoder_identity(enc).identity == old and pa["config_hash"] == C.config_hash(old)
    assert pa["encoder"] == "tiny-test" and ta["encoder"] == "tiny-test+reinhard+d8+bgfill"
    assert ta["config_hash"] != pa["config_hash"] and ta["encoder_identity"]["views"]["tta"] == "d8"
    assert ta["views"]["stain_norm"] == "reinhard" and ta["n_views"] == 8
    assert ta["extract_seconds"] > 0 and pa["extract_seconds"] > 0
    assert not np.allclose(C.read_cache(plain).features["16"], C.read_cache(tta).features["16"])


def test_a_variant_name_loads_its_caches_and_a_mixed_file_is_refused(tmp_path):
    from stfeat.features import FeatureSet

    s = fake_sample(6)
    (tta,), _ = _run([s], tmp_path, tta="d8")
    fs = FeatureSet.load([s], encoder="tiny-test+d8", cache_dir=tmp_path)
    assert fs.samples["S1"].source == tta and fs.provenance["encoder"] == "tiny-test+d8"
    # a plain file under the d8 folder is never mixed in
    (plain,), _ = _run([fake_sample(6, sample_id="S2")], tmp_path)
    wrong = tmp_path / "tiny-test+d8" / "S2.h5"
    shutil.copy(plain, wrong)
    with pytest.raises(InputError) as ei:
        _run([fake_sample(6, sample_id="S2")], tmp_path, tta="d8")
    assert str(wrong) in str(ei.value) and "--overwrite" in str(ei.value)
    with pytest.raises(InputError, match="names the views"):
        _run([s], tmp_path, encoder="densenet121+d8", tta="none", stain_norm="macenko")


def test_variant_names_parse_and_aliases_keep_their_folder():
    from stfeat.encoders.base import aliases_of

    spec = ViewSpec(stain_norm="macenko", tta="d8", tta_hed_jitter=0.05, background="fill")
    assert spec.suffix == "+macenko+d8+hed0.05+bgfill"
    assert ViewSpec.from_variant("densenet121" + spec.suffix) == ("densenet121", spec)
    assert ViewSpec.from_variant("densenet121") == ("densenet121", ViewSpec())
    assert ViewSpec().suffix == "" and ViewSpec().identity() is None
    assert C.encoder_tag("densenet121+macenko") == "densenet121+macenko"
    alias = next(iter(aliases_of("uni")), None)
    if alias is not None:
        assert C.encoder_tag(alias + "+d8") == C.encoder_tag("uni") + "+d8"
    with pytest.raises(InputError):
        ViewSpec(tta="d4")


def test_dense_mode_refuses_views(tmp_path):
    with pytest.raises(InputError, match="plain views"):
        _run([fake_sample(4)], tmp_path, mode="dense", tta="d8")


def test_resolution_warning(tmp_path, caplog):
    s = fake_sample(4)
    with caplog.at_level(logging.WARNING, logger="stfeat.views"):
        extract_caches([s], encoder=tiny_encoder(), cache_dir=tmp_path, scales_um=(8, 32), batch_size=4,
                       num_workers=0, device="cpu")
    msgs = [r.getMessage() for r in caplog.records if "upsampled" in r.getMessage()]
    assert msgs == ["S1: 8 um spans 16 px at 0.5 um/px, upsampled 2.0x to the encoder's 32 px"]


# ------------------------------------------------------------------------------------------- predict
class ThumbSlide(FakeSlide):
    def thumbnail(self, max_px):
        return self.image, 1.0


def _counted(sample_id: str, patient: str, seed: int):
    import scipy.sparse as sp

    s = fake_sample(9, seed=seed, sample_id=sample_id, patient=patient)
    s.slide = ThumbSlide(s.slide.image)
    s.adata.X = sp.csr_matrix(np.random.default_rng(seed).poisson(5, s.adata.shape).astype(np.float32))
    return s


def test_a_model_fitted_on_a_variant_extracts_new_samples_with_its_views(tmp_path):
    from sklearn.linear_model import Ridge

    from stfeat.fitting import fit_report
    from stfeat.prediction import predict

    enc = tiny_encoder()
    train = [_counted("A", "PA", 1), _counted("B", "PB", 2)]
    extract_caches(train, encoder=enc, cache_dir=tmp_path / "cache", scales_um=(16,), batch_size=4, num_workers=0,
                   device="cpu", tta="d8", background="fill")
    fit_report(train, encoder="tiny-test+d8+bgfill", cache_dir=tmp_path / "cache", head=[Ridge()], genes="common",
               out_dir=tmp_path / "out", plots=False)
    new = _counted("N", "PN", 3)
    a = predict(tmp_path / "out", new, encoder=enc, device="cpu", plot=False)
    made = tmp_path / "cache" / "tiny-test+d8+bgfill" / "N.h5"
    assert a.uns["stfeat"]["features"] == f"extracted into {made}"
    assert C.read_attrs(made)["views"]["tta"] == "d8" and not (tmp_path / "cache" / "tiny-test" / "N.h5").exists()
    assert a.shape == (9, 3) and np.isfinite(a.X).all()
