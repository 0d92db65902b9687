"""Dense extraction: tile plan geometry, window pooling, agreement with crops, cache provenance, auto mode."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from platform_builders import make_visium_hd
from test_io_builders import make_spaceranger, save_image, tissue_image

from stfeat import dense as D
from stfeat.errors import InputError


def _extract_caches():
    """The path-returning extraction entry point (``extract_caches`` after the API refactor)."""
    try:
        from stfeat.extraction import extract_caches
    except ImportError:
        from stfeat.extraction import extract_caches
    return extract_caches


def _patch_encoder(px: int = 64, stride: int = 8, dim: int = 16):
    """A CNN whose map cells see only their own pixels: dense windows must then equal crops."""
    import torch
    import torch.nn as nn

    from stfeat.encoders.base import EncoderSpec, Encoder

    class PatchCNN(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, dim, stride, stride)

        def forward_features(self, x):
            return torch.tanh(self.conv(x))

        def forward(self, x):
            return self.forward_features(x).mean(dim=(2, 3))

    spec = EncoderSpec(name="patchcnn", family="test", embed_dim=dim, input_px=px, um_per_px=None)
    return Encoder(spec, PatchCNN(), weights_id="random:seed0")


def test_every_point_has_one_tile_holding_its_whole_window():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 5000, size=(3000, 2))
    for scale, um in ((112.0, 0.5), (448.0, 0.25)):
        plan = D.plan_tiles(pts, scale_um=scale, input_px=224, um_per_px=um, tile_px=896)
        members = np.concatenate(plan.members)
        assert np.array_equal(np.sort(members), np.arange(len(pts)))  # each point served exactly once
        half_tile = 896 * plan.q / 2
        half_win = scale / 2 / um
        for c, idx in zip(plan.centres, plan.members):
            lo, hi = c - half_tile, c + half_tile
            assert (pts[idx] - half_win >= lo - 1e-6).all() and (pts[idx] + half_win <= hi + 1e-6).all()
        # tiles overlap by one window, so there are about (extent / inner step)^2 of them, not more
        step_um = (896 - 224) * scale / 224
        assert plan.n_tiles <= (np.ceil(5000 * um / step_um) + 1) ** 2


def test_window_means_are_box_means_interpolated():
    import torch

    fmap = torch.randn(3, 12, 12)
    k = 4
    got = D._window_means(fmap, k, np.array([2.0, 5.0, 2.5]), np.array([3.0, 0.0, 3.0]))
    want0 = fmap[:, 2:6, 3:7].mean(dim=(1, 2)).numpy()
    want1 = fmap[:, 5:9, 0:4].mean(dim=(1, 2)).numpy()
    want2 = 0.5 * (want0 + fmap[:, 3:7, 3:7].mean(dim=(1, 2)).numpy())
    np.testing.assert_allclose(got, np.stack([want0, want1, want2]), rtol=1e-5, atol=1e-6)


def test_dense_equals_crop_for_a_local_model(tmp_path):
    """With a map whose cells see only themselves, a dense window is the crop's pooled map."""
    from stfeat.batching import extract_points
    from stfeat.slide import open_slide

    enc = _patch_encoder()
    slide = open_slide(save_image(tmp_path / "t.png", tissue_image(900, 800, seed=3)), um_per_px=0.5)
    rng = np.random.default_rng(1)
    pts = rng.uniform(120, 680, size=(50, 2))
    stats = D.DenseStats()
    feats, pads = D.dense_features(slide, pts, encoder=enc, scales_um=[32.0, 64.0], um_per_px=0.5, stats=stats)
    crops = extract_points(slide, pts, encoder=enc, scales_um=[32.0, 64.0], um_per_px=0.5)
    for s in ("32", "64"):
        a, b = feats[s], crops[s]
        assert a.shape == b.shape == (50, 16) and not pads[s].any()
        r = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(16)]
        assert np.median(r) > 0.97, r  # only the resampling of crop vs tile pixels differs
        assert np.abs(a - b).mean() < 0.1 * np.abs(b).mean()
    assert sum(stats.forwards.values()) < 2 * 50 / 5  # far fewer forwards than the 100 crops


@pytest.mark.parametrize("name, with_cls", [("virchow", True), ("uni", False)])
def test_vit_token_map_at_any_tile_size(tmp_path, name, with_cls):
    from stfeat.encoders import create_encoder
    from stfeat.slide import open_slide

    enc = create_encoder(name, tiny=True, pretrained=False)
    mm = D.map_model(enc)
    assert mm.kind == "vit" and mm.with_cls is with_cls
    slide = open_slide(save_image(tmp_path / "t.png", tissue_image(700, 700)), um_per_px=0.5)
    pts = np.array([[300.0, 300.0], [420.0, 380.0]])
    feats, _ = D.dense_features(slide, pts, encoder=enc, scales_um=[112.0], um_per_px=0.5, tile_px=448)
    assert feats["112"].shape == (2, enc.embed_dim) and np.isfinite(feats["112"]).all()
    # the model is left as built: crops still go through the fixed-size path
    import torch

    assert enc(torch.zeros(1, 224, 224, 3, dtype=torch.uint8)).shape == (1, enc.embed_dim)


def test_classical_encoder_has_no_map_and_auto_falls_back():
    from stfeat.encoders import create_encoder

    enc = create_encoder("classical")
    with pytest.raises(InputError, match="no patch-token or feature map"):
        D.map_model(enc)
    grid = np.stack(np.meshgrid(np.arange(30) * 8.0, np.arange(30) * 8.0), -1).reshape(-1, 2)
    assert D.resolve_mode("auto", grid, enc)[0] == "crop"
    assert D.resolve_mode("auto", grid, None)[0] == "dense"
    assert D.resolve_mode("auto", grid * 12.5, None)[0] == "crop"  # 100 um pitch: spots


def test_tissue_mask_and_points(tmp_path):
    from stfeat.slide import open_slide

    img = np.full((600, 800, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:600, 0:800]
    blob = (xx - 300) ** 2 + (yy - 300) ** 2 < 150**2
    img[blob] = tissue_image(800, 600)[blob] // 2 + np.array([90, 20, 70], np.uint8)
    slide = open_slide(save_image(tmp_path / "t.png", img), um_per_px=1.0)
    mask, scale = D.tissue_mask(slide, max_px=400)
    m_blob = blob[:: int(round(1 / scale)), :: int(round(1 / scale))][: mask.shape[0], : mask.shape[1]]
    assert (mask == m_blob).mean() > 0.97
    pts = D.tissue_points(slide, step_um=10.0, um_per_px=1.0, max_px=400)
    assert abs(len(pts) - np.pi * 150**2 / 100) < 0.05 * np.pi * 150**2 / 100
    assert (((pts - 300) ** 2).sum(1) < 160**2).all()


def test_extract_dense_mode_into_the_cache_with_provenance(tmp_path):
    extract = _extract_caches()
    from stfeat.io import read_sample

    t = make_visium_hd(tmp_path / "HD1", bins=(8,), extent_um=240.0)
    full = save_image(tmp_path / "full.png", t["full"])
    sample = read_sample(tmp_path / "HD1", image=full)
    enc = _patch_encoder()
    (path,) = extract([sample], encoder=enc, scales_um=[32.0, 64.0], cache_dir=tmp_path / "c", mode="auto",
                      k_neighbors=4)
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        feats = f["features/32"][...]
        assert f["done/64"][...].all()
    assert a["extraction_mode"] == "dense" and "auto" in a["extraction_mode_reason"]
    assert int(a["dense_forwards"]) < sample.n_spots / 20  # 870 bins x 2 scales from a handful of tiles
    assert np.isfinite(feats).all() and feats.std(0).mean() > 0
    # asking for crop features in the same cache is refused, not silently served dense ones
    with pytest.raises(InputError, match="dense-mode features, not the requested crop-mode"):
        extract([sample], encoder=enc, scales_um=[32.0], cache_dir=tmp_path / "c", mode="crop")


def test_auto_keeps_crop_for_visium_spots(tmp_path):
    extract = _extract_caches()
    from stfeat.io import read_sample

    t = make_spaceranger(tmp_path / "S1", um_per_px=0.5)
    sample = read_sample(tmp_path / "S1", image=save_image(tmp_path / "full.png", t["full"]))
    (path,) = extract([sample], encoder=_patch_encoder(), scales_um=[32.0], cache_dir=tmp_path / "c", k_neighbors=0)
    with h5py.File(path, "r") as f:
        assert f.attrs["extraction_mode"] == "crop" and "spots" in f.attrs["extraction_mode_reason"]


def test_cli_extract_mode_dense_on_visium_hd(tmp_path):
    import warnings

    from typer.testing import CliRunner

    from stfeat.cli import app

    make_visium_hd(tmp_path / "HD1", bins=(8,), extent_um=160.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(app, ["extract", str(tmp_path / "HD1"), "--encoder", "resnet50-trunc", "--no-pretrained",
                                     "--scales-um", "64", "--mode", "dense", "--cache-dir", str(tmp_path / "c"),
                                     "--k-neighbors", "0"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "c" / "resnet50-trunc" / "HD1.h5", "r") as f:
        assert f.attrs["extraction_mode"] == "dense" and f.attrs["extraction_mode_reason"] == "requested"
        assert int(f.attrs["dense_forwards"]) == 1 and f["done/64"][...].all()


def _bordered_image() -> np.ndarray:
    """Tissue with a black scan background on the left, white glass on top and a white patch inside."""
    img = tissue_image(900, 800, seed=3)
    img[:, :150] = 0
    img[:120] = 245
    img[600:, 500:] = 255
    return img


def test_dense_tissue_fraction_equals_the_crops(tmp_path):
    """The tissue fraction of a point's window from the tile pixels is the crop's (views.background_mask)."""
    from stfeat.slide import open_slide
    from stfeat.views import background_mask

    slide = open_slide(save_image(tmp_path / "t.png", _bordered_image()), um_per_px=0.5)
    rng = np.random.default_rng(2)
    # random points, points on the black and white borders, and windows running past the image edge (white)
    pts = np.r_[rng.uniform(20, 880, size=(150, 2)), [[150, 400], [160, 130], [140, 500], [10, 10], [895, 795],
                                                      [500, 600], [450, 119]]]
    for s in (32.0, 64.0):
        tissue: dict = {}
        D.dense_features(slide, pts, encoder=_patch_encoder(), scales_um=[s], um_per_px=0.5, tissue=tissue)
        crops, _ = slide.read_regions(pts, s, 64, um_per_px=0.5)
        want = 1.0 - background_mask(crops).mean(axis=(1, 2))
        got = tissue[f"{s:g}"]
        assert got.shape == (len(pts),) and np.isfinite(got).all()
        assert ((want > 0.05) & (want < 0.95)).sum() > 20  # many windows straddle a border
        err = np.abs(got - want)
        assert err.max() < 0.04 and err.mean() < 0.01, (err.max(), err.mean())  # only the resampling differs
        border = np.abs(pts[:, 0] - 150) < 20
        assert np.abs(got[border] - want[border]).max() < 0.04 and (want[border] < 0.95).all()
        assert got[-4] == pytest.approx(want[-4], abs=0.04) and got[-4] < 0.7  # a corner past the edge: white
    # without the dict nothing extra is computed or returned
    feats, pads = D.dense_features(slide, pts[:3], encoder=_patch_encoder(), scales_um=[32.0], um_per_px=0.5)
    assert set(feats) == set(pads) == {"32"}


def test_extract_dense_writes_the_tissue_fraction(tmp_path):
    extract = _extract_caches()
    from stfeat.io import read_sample

    t = make_visium_hd(tmp_path / "HD1", bins=(8,), extent_um=240.0)
    img = t["full"].copy()
    img[:, :200] = 0  # black scan background over the left bins
    img[:, 400:] = 250  # glass over the right ones
    full = save_image(tmp_path / "full.png", img)
    sample = read_sample(tmp_path / "HD1", image=full)
    enc = _patch_encoder()
    out = {}
    for mode in ("dense", "crop"):
        (path,) = extract([sample], encoder=enc, scales_um=[32.0, 64.0], cache_dir=tmp_path / mode, mode=mode,
                          k_neighbors=0)
        with h5py.File(path, "r") as f:
            assert f.attrs["extraction_mode"] == mode
            out[mode] = {s: f["tissue"][s][...].astype(np.float32) for s in ("32", "64")}
    for s in ("32", "64"):
        dense, crop = out["dense"][s], out["crop"][s]
        assert np.isfinite(dense).all() and dense.min() < 0.05 and dense.max() > 0.95
        np.testing.assert_allclose(dense, crop, atol=0.04)
        assert np.abs(dense - crop).mean() < 0.01
