"""Visium HD (2/8/16 um bins) and Xenium (cells on an aligned H&E), on outs/ folders built in code."""

from __future__ import annotations

import numpy as np
import pytest
from platform_builders import make_visium_hd, make_xenium
from test_io_builders import save_image

from stfeat.errors import InputError
from stfeat.io import detect_format, read_sample, resolve_samples


@pytest.mark.parametrize("b", [2, 8, 16])
def test_visium_hd_every_bin_size(tmp_path, b):
    t = make_visium_hd(tmp_path / "HD1", bins=(2, 8, 16))
    full = save_image(tmp_path / "full.png", t["full"])
    assert detect_format(tmp_path / "HD1") == "visium-hd"
    s = read_sample(tmp_path / "HD1", image=full, bin_size_um=b)
    tb = t["bins"][b]
    assert s.format == "visium-hd" and s.sample_id == "HD1"
    assert list(s.barcodes) == list(tb["barcodes"])  # off-tissue first row dropped
    np.testing.assert_allclose(s.coords, tb["coords"])  # (x, y) = (pxl_col, pxl_row)
    np.testing.assert_array_equal(s.adata.X.toarray(), tb["X"])
    assert s.um_per_px == pytest.approx(0.5) and "microns_per_pixel" in s.um_per_px_source
    assert s.meta["bin_size_um"] == b and s.slide.scale == 1.0 and s.warnings == []


def test_visium_hd_default_8um_hires_fallback_and_bin_folder(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=(8, 16), microns_per_pixel=False)
    with pytest.warns(UserWarning, match="reduced detail"):
        s = read_sample(tmp_path / "HD1" / "outs")
    assert s.meta["bin_size_um"] == 8 and s.slide.scale == 0.5
    assert s.slide.dimensions == t["size"]  # coordinate px stay full resolution
    assert s.um_per_px == pytest.approx(0.5) and "spot_diameter_fullres" in s.um_per_px_source
    # a square_NNNum folder itself reads that bin size, and is not mistaken for Visium v1/v2
    d16 = tmp_path / "HD1" / "outs" / "binned_outputs" / "square_016um"
    assert detect_format(d16) == "visium-hd"
    with pytest.warns(UserWarning):
        s16 = read_sample(d16)
    assert s16.meta["bin_size_um"] == 16 and s16.n_spots == len(t["bins"][16]["barcodes"])
    refs = resolve_samples(tmp_path / "HD1")
    assert [r.sample_id for r in refs] == ["HD1"]


def test_visium_hd_missing_bin_folder_is_named(tmp_path):
    make_visium_hd(tmp_path / "HD1", bins=(8, 16))
    with pytest.raises(InputError, match=r"no square_002um/ folder: this run holds bins of 8 um, 16 um") as e:
        read_sample(tmp_path / "HD1", bin_size_um=2)
    assert "bin_size_um" in e.value.fix


def test_visium_hd_unknown_pixel_size_is_named(tmp_path):
    import json

    t = make_visium_hd(tmp_path / "HD1", bins=(8,), microns_per_pixel=False)
    sfp = t["outs"] / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sfp.read_text())
    del sf["spot_diameter_fullres"]
    sfp.write_text(json.dumps(sf))
    with pytest.raises(InputError, match="micrometres per pixel of this sample is unknown") as e:
        read_sample(tmp_path / "HD1", image=save_image(tmp_path / "f.png", t["full"]))
    assert e.value.path == sfp
    s = read_sample(tmp_path / "HD1", image=tmp_path / "f.png", um_per_px=0.5)
    assert s.um_per_px_source == "user"


def test_xenium_cells_land_on_he_level0_pixels(tmp_path):
    t = make_xenium(tmp_path / "X1")
    assert detect_format(tmp_path / "X1") == "xenium"
    s = read_sample(tmp_path / "X1")
    assert s.format == "xenium" and s.sample_id == "X1"
    assert list(s.barcodes) == list(t["ids"])
    np.testing.assert_allclose(s.coords, t["he"], atol=1e-6)  # inverse of the H&E -> morphology affine
    assert list(s.adata.var_names) == t["genes"]  # control probes and codewords dropped
    np.testing.assert_array_equal(s.adata.X.toarray(), t["X"])
    assert s.um_per_px == pytest.approx(t["he_um_per_px"]) and "alignment" in s.um_per_px_source
    assert s.slide is not None and s.meta["xenium_pixel_size_um"] == pytest.approx(0.2125)
    np.testing.assert_allclose(np.c_[s.adata.obs["x_um"], s.adata.obs["y_um"]] / 0.2125,
                               t["he"] @ t["A"][:2, :2].T + t["A"][:2, 2])


def test_xenium_inverted_alignment_is_named(tmp_path):
    t = make_xenium(tmp_path / "X1")
    np.savetxt(t["outs"] / "test_he_imagealignment.csv", np.linalg.inv(t["A"]), delimiter=",")
    with pytest.raises(InputError, match=r"sends .* cells off the H&E.*looks inverted") as e:
        read_sample(tmp_path / "X1")
    assert e.value.path.name == "test_he_imagealignment.csv"


def test_xenium_unknown_pixel_size_and_bad_matrix(tmp_path):
    make_xenium(tmp_path / "X1", pixel_size=None)
    with pytest.raises(InputError, match="Xenium pixel size is unknown"):
        read_sample(tmp_path / "X1")
    t = make_xenium(tmp_path / "X2")
    (t["outs"] / "test_he_imagealignment.csv").write_text("1,0,0\n0,1,0\n")
    with pytest.raises(InputError, match="not a finite 3 x 3 affine"):
        read_sample(tmp_path / "X2")


def test_xenium_without_alignment_warns_identity(tmp_path):
    make_xenium(tmp_path / "X1", write_alignment=False, theta=0.0, shift=(0, 0), he_um_per_px=0.2125)
    with pytest.warns(UserWarning, match="no alignment matrix"):
        s = read_sample(tmp_path / "X1")
    assert s.um_per_px == pytest.approx(0.2125)


def test_manifest_columns_pick_bin_size_and_alignment(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=(8, 16))
    x = make_xenium(tmp_path / "X1")
    aln = x["outs"] / "test_he_imagealignment.csv"
    moved = tmp_path / "my_alignment.csv"
    aln.rename(moved)
    save_image(tmp_path / "full.png", t["full"])
    (tmp_path / "m.csv").write_text("sample_id,patient,path,image,bin_size_um,alignment\n"
                                    "HD1,P1,HD1,full.png,16,\nX1,P2,X1,,,my_alignment.csv\n")
    hd, xe = (r.load() for r in resolve_samples(tmp_path / "m.csv"))
    assert hd.meta["bin_size_um"] == 16 and hd.n_spots == len(t["bins"][16]["barcodes"])
    np.testing.assert_allclose(xe.coords, x["he"], atol=1e-6)
    assert xe.patient == "P2"
