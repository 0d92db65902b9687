"""Slide: crops in micrometres, pyramid levels, padding, pickling, memmap cache, bad images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from test_io_builders import save_image, save_pyramid_tiff, tissue_image

from stfeat.errors import InputError
from stfeat.slide import open_slide


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STFEAT_SLIDE_CACHE", str(tmp_path / "cache" / "slides"))


@pytest.fixture
def png(tmp_path):
    arr = tissue_image(600, 400)
    return save_image(tmp_path / "img.png", arr), arr


def test_read_region_is_exact_crop_at_native_resolution(png):
    path, arr = png
    s = open_slide(path, um_per_px=0.5)
    # 50 um at 0.5 um/px = 100 px, asked at 100 px: no resampling, the exact window
    crop, padded = s.read_region((300, 200), 50, 100)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    assert not padded
    np.testing.assert_array_equal(crop, arr[150:250, 250:350])


def test_read_region_downsamples_with_antialiasing(png):
    path, arr = png
    s = open_slide(path, um_per_px=1.0)
    crop, _ = s.read_region((300, 200), 200, 50)  # 200 px -> 50 px
    ref = arr[100:300, 200:400].reshape(50, 4, 50, 4, 3).mean(axis=(1, 3))
    assert np.abs(crop.astype(float) - ref).mean() < 6  # close to the box average, no aliasing


def test_crop_past_the_edge_is_white_and_flagged(png):
    path, arr = png
    s = open_slide(path, um_per_px=1.0)
    crop, padded = s.read_region((10, 10), 40, 40)
    assert padded
    assert (crop[:10, :10] == 255).all()  # the part left of / above the image
    np.testing.assert_array_equal(crop[10:, 10:], arr[0:30, 0:30])
    crops, flags = s.read_regions(np.array([[10, 10], [300, 200]]), 40, 40)
    assert flags.tolist() == [True, False]
    np.testing.assert_array_equal(crops[0], crop)


def test_read_regions_matches_read_region(png):
    path, _ = png
    s = open_slide(path, um_per_px=0.7)
    centres = np.array([[100.5, 120.2], [300, 200], [550, 380]])
    batch, flags = s.read_regions(centres, 112, 64)
    for i, c in enumerate(centres):
        one, p = s.read_region(c, 112, 64)
        np.testing.assert_array_equal(batch[i], one)
        assert flags[i] == p


def test_jpeg_pyramid_levels_and_level_choice(tmp_path):
    arr = tissue_image(2100, 2050)
    s = open_slide(save_image(tmp_path / "big.jpg", arr, quality=95), um_per_px=0.25)
    assert s.level_count == 2 and s.level_dimensions[1] == (525, 512)
    assert s.level_downsamples[1] == pytest.approx(4.0)
    assert s.best_level(1.0) == 0 and s.best_level(3.9) == 0 and s.best_level(4.0) == 1 and s.best_level(9) == 1
    # 448 um at 0.25 um/px = 1792 px -> 224 px: downsample 8, read from level 1
    crop, padded = s.read_region((1050, 1025), 448, 224)
    assert crop.shape == (224, 224, 3) and not padded
    ref = arr[1025 - 896 : 1025 + 896, 1050 - 896 : 1050 + 896].reshape(224, 8, 224, 8, 3).mean(axis=(1, 3))
    assert np.abs(crop.astype(float) - ref).mean() < 8


def test_pickled_slide_reopens_lazily_and_shares_the_memmap(png, tmp_path):
    path, _ = png
    s = open_slide(path, um_per_px=1.0)
    a, _ = s.read_region((200, 150), 64, 32)
    files = sorted((tmp_path / "cache" / "slides").glob("*.u8"))
    assert len(files) == 1  # level 0 decoded once into the cache
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._backend is None
    b, _ = s2.read_region((200, 150), 64, 32)
    np.testing.assert_array_equal(a, b)
    assert sorted((tmp_path / "cache" / "slides").glob("*.u8")) == files  # reused, not decoded again
    assert isinstance(s2._backend.level(0), np.memmap)


def test_large_jpeg_opens_despite_pil_bomb_guard(tmp_path, monkeypatch):
    from PIL import Image

    p = save_image(tmp_path / "wide.jpg", tissue_image(400, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # everything "is a bomb" now
    s = open_slide(p, um_per_px=1.0)
    crop, _ = s.read_region((200, 150), 50, 25)
    assert crop.shape == (25, 25, 3)
    assert s.thumbnail(64)[0].shape[1] == 64
    assert Image.MAX_IMAGE_PIXELS == 1000  # the guard is restored for everyone else


def test_thumbnail_size_and_scale(tmp_path):
    p = save_image(tmp_path / "t.jpg", tissue_image(800, 400))
    s = open_slide(p)
    rgb, f = s.thumbnail(200)
    assert rgb.shape == (100, 200, 3) and f == pytest.approx(0.25)


def test_pyramidal_tiff_resolution_levels_and_crops(tmp_path):
    arr = tissue_image(1024, 768)
    p = save_pyramid_tiff(tmp_path / "wsi.tif", arr, um_per_px=0.5, levels=3)
    s = open_slide(p)
    assert s.um_per_px == pytest.approx(0.5)
    assert s.um_per_px_source in ("tiffslide-mpp", "openslide-mpp", "tiff-resolution")
    assert s.level_count == 3 and s.level_dimensions == [(1024, 768), (512, 384), (256, 192)]
    crop, padded = s.read_region((512, 384), 64, 128)  # 128 px at level 0: exact
    np.testing.assert_array_equal(crop, arr[320:448, 448:576])
    crop, _ = s.read_region((512, 384), 256, 128)  # 512 px -> 128: level 1 (ds 2) is closest above
    assert s.best_level(4.0) == 2 and s.best_level(3.9) == 1
    ref = arr[128:640, 256:768].reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
    assert np.abs(crop.astype(float) - ref).mean() < 8
    crop, padded = s.read_region((5, 5), 64, 32)
    assert padded and (crop[0, 0] == 255).all()
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.read_region((512, 384), 64, 128)[0], arr[320:448, 448:576])


def test_tiff_without_resolution_has_no_um_per_px(tmp_path):
    p = save_pyramid_tiff(tmp_path / "nores.tif", tissue_image(256, 256), um_per_px=None, levels=1)
    s = open_slide(p)
    assert s.um_per_px is None
    with pytest.raises(InputError, match="micrometres per pixel"):
        s.read_region((100, 100), 50, 32)
    assert s.read_region((100, 100), 50, 32, um_per_px=1.0)[0].shape == (32, 32, 3)


def test_scaled_slide_maps_fullres_coordinates(tmp_path):
    from PIL import Image

    full = tissue_image(800, 800)
    hires = np.asarray(Image.fromarray(full).resize((200, 200), Image.Resampling.BOX))
    s = open_slide(save_image(tmp_path / "hires.png", hires), scale=0.25, um_per_px=0.5)
    assert s.dimensions == (800, 800) and s.image_dimensions == (200, 200)
    assert s.level_downsamples[0] == pytest.approx(4.0)
    crop, _ = s.read_region((400, 400), 200, 100)  # 400 full-res px = 100 hires px: exact hires window
    np.testing.assert_array_equal(crop, hires[50:150, 50:150])


def test_truncated_jpeg_is_an_input_error(tmp_path):
    p = save_image(tmp_path / "ok.jpg", tissue_image(300, 300))
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        open_slide(bad)
    assert "truncated.jpg" in str(e.value) and "truncated" in e.value.problem


def test_corrupt_image_is_an_input_error(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    with pytest.raises(InputError, match="corrupt.png.*cannot be decoded"):
        open_slide(bad)
    tif = tmp_path / "corrupt.tif"
    tif.write_bytes(b"II*\x00" + b"\x00" * 40)
    with pytest.raises(InputError, match="corrupt.tif"):
        open_slide(tif)


def test_missing_and_unsupported_images(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "nope.jpg")
    odd = tmp_path / "img.xyz"
    odd.write_bytes(b"123")
    with pytest.raises(InputError, match="unsupported image type"):
        open_slide(odd)


def test_her2st_jpeg_thumbnail_without_full_decode(her2st, tmp_path):
    img = next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    s = open_slide(img, um_per_px=0.69)
    assert s.dimensions == (9274, 9911)
    rgb, f = s.thumbnail(256)
    assert max(rgb.shape[:2]) == 256 and f == pytest.approx(256 / 9911, rel=0.01)
    assert not list((tmp_path / "cache" / "slides").glob("*.u8"))  # draft decode, nothing cached
