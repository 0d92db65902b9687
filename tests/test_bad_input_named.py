"""Every bad input of the hardening issue is an InputError naming the file, the problem and the fix.

One test per case; the wrong-results ones (duplicates, BOM, sample ids, 1e40 counts, grey-filled JPEG)
failed before the fix, the others ended in raw tracebacks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from test_io_builders import make_legacy, make_spaceranger, save_image, save_pyramid_tiff, tissue_image

from stfeat.errors import InputError
from stfeat.io import read_manifest, read_sample
from stfeat.slide import open_slide


def _named(exc_info, name):
    err = exc_info.value
    assert err.path is not None and name in str(err.path), (err.path, name)
    assert err.problem and err.fix and "Fix:" in str(err)
    return err


# ------------------------------------------------------------------------------------------- manifests
@pytest.fixture
def study(tmp_path):
    make_legacy(tmp_path / "data" / "st", "B1", patient_dir="B")
    make_legacy(tmp_path / "data" / "st2", "B2", patient_dir="B")
    return tmp_path


def test_manifest_same_path_under_two_patients_is_refused(study):
    m = study / "m.csv"
    m.write_text("sample_id,patient,path\nB1,P1,data/st\nB1x,P2,data/st\n")
    with pytest.raises(InputError, match="same data") as e:
        read_manifest(m)
    _named(e, "m.csv")


def test_manifest_copy_of_the_same_counts_is_refused(study):
    shutil.copytree(study / "data" / "st", study / "data" / "copy")
    m = study / "m.csv"
    m.write_text("sample_id,patient,path\nB1,P1,data/st\nB1copy,P2,data/copy\n")
    with pytest.raises(InputError, match="identical counts files") as e:
        read_manifest(m)
    _named(e, "m.csv")


def test_manifest_with_a_utf8_bom(study):
    m = study / "bom.csv"
    m.write_bytes("\ufeffsample_id,patient,path\nB1,P1,data/st\n".encode("utf-8"))
    (r,) = read_manifest(m)
    assert r.sample_id == "B1" and r.load().n_spots == 23  # was: "counts file of section \ufeffsample_id ..."


def test_manifest_legacy_sample_id_other_than_the_file_name(study):
    m = study / "m.csv"
    m.write_text("sample_id,patient,path\nX1,P1,data/st\nX2,P2,data/st2/ST-cnts/B2.tsv.gz\n")
    a, b = read_manifest(m)
    sa, sb = a.load(), b.load()  # was: "the counts file of section X1 is missing"
    assert (sa.sample_id, sa.n_spots, sb.sample_id, sb.n_spots) == ("X1", 23, "X2", 23)


def test_empty_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("")
    with pytest.raises(InputError, match="empty") as e:
        read_manifest(m)
    _named(e, "m.csv")


def test_manifest_um_per_px_inf(study):
    m = study / "m.csv"
    m.write_text("sample_id,patient,path,um_per_px\nB1,P1,data/st,inf\n")
    with pytest.raises(InputError, match="not a positive finite number") as e:
        read_manifest(m)
    _named(e, "m.csv")


def test_manifest_path_not_valid_utf8(study):
    m = study / "m.csv"
    m.write_bytes(b"sample_id,patient,path\nB1,P1,data/\xff\xfe\n")
    with pytest.raises(InputError, match="cannot be parsed") as e:
        read_manifest(m)
    _named(e, "m.csv")
    str(e.value).encode("utf-8")  # printable


def test_yaml_nested_10000_levels(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("samples: " + "[" * 10000 + "]" * 10000 + "\n")
    with pytest.raises(InputError, match="nests deeper than 64 levels") as e:
        read_manifest(m)
    _named(e, "m.yaml")


def test_config_nested_10000_levels(tmp_path):
    from stfeat.config import load_config

    c = tmp_path / "c.yaml"
    c.write_text("fit: " + "{a: " * 10000 + "1" + "}" * 10000 + "\n")
    with pytest.raises(InputError, match="nests deeper") as e:
        load_config(c)
    _named(e, "c.yaml")


# ------------------------------------------------------------------------------------------- counts, spots
@pytest.fixture
def legacy(tmp_path):
    return tmp_path, make_legacy(tmp_path, "A1")


def test_count_of_1e40_is_refused(legacy):
    root, t = legacy
    df = pd.read_csv(t["counts_path"], sep="\t", index_col=0).astype(float)
    df.iloc[0, 0] = 1e40
    df.to_csv(t["counts_path"], sep="\t")
    with pytest.raises(InputError, match="above 1e"):  # was: accepted, +inf as float32
        read_sample(root)


def _spots(t, fn):
    sp = pd.read_csv(t["spots_path"], sep="\t", dtype=str)
    fn(sp)
    sp.to_csv(t["spots_path"], sep="\t", index=False)


def test_spot_pixel_coordinate_1e300(legacy):
    root, t = legacy
    _spots(t, lambda sp: sp.__setitem__("pixel_x", ["1e300"] + list(sp.pixel_x[1:])))
    with pytest.raises(InputError, match="beyond 10 million px") as e:
        read_sample(root)
    _named(e, "A1_selection.tsv")


def test_spot_pixel_column_not_numeric(legacy):
    root, t = legacy
    _spots(t, lambda sp: sp.__setitem__("pixel_y", list(sp.pixel_y[:4]) + ["abc"] + list(sp.pixel_y[5:])))
    with pytest.raises(InputError, match="column pixel_y holds 1 values that are not numbers .*line 6") as e:
        read_sample(root)
    _named(e, "A1_selection.tsv")


def test_spot_pixel_nan_in_a_selected_row(legacy):
    root, t = legacy
    _spots(t, lambda sp: sp.__setitem__("pixel_x", list(sp.pixel_x[:-1]) + [""]))
    with pytest.raises(InputError, match="missing or not numbers") as e:
        read_sample(root)
    _named(e, "A1_selection.tsv")


def test_spot_file_of_binary_garbage(legacy):
    root, t = legacy
    t["spots_path"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(InputError) as e:
        read_sample(root)
    _named(e, "A1_selection.tsv")


def _h5ad(tmp_path, spatial, n=6):
    import anndata as ad
    import scipy.sparse as sp

    a = ad.AnnData(sp.csr_matrix(np.ones((n, 3), np.float32)))
    a.obs_names = [f"s{i}" for i in range(n)]
    if spatial is not None:
        a.obsm["spatial"] = spatial
    p = tmp_path / "x.h5ad"
    a.write_h5ad(p)
    return p


def test_h5ad_spatial_with_one_column(tmp_path):
    p = _h5ad(tmp_path, np.arange(6, dtype=float)[:, None])
    with pytest.raises(InputError, match="2 columns") as e:
        read_sample(p, um_per_px=1.0)
    _named(e, "x.h5ad")


def test_h5ad_spatial_of_strings(tmp_path):
    p = _h5ad(tmp_path, np.array([["a", "b"]] * 6, dtype=object).astype(str))
    with pytest.raises(InputError, match="not numbers") as e:
        read_sample(p, um_per_px=1.0)
    _named(e, "x.h5ad")


def test_h5ad_with_zero_spots(tmp_path):
    p = _h5ad(tmp_path, np.zeros((0, 2)), n=0)
    with pytest.raises(InputError, match="no spots") as e:
        read_sample(p, um_per_px=1.0)
    _named(e, "x.h5ad")


# ------------------------------------------------------------------------------------------- images
def _png_declaring(path, w, h):
    """A tiny valid PNG, then its IHDR rewritten to declare w x h (CRC fixed)."""
    save_image(path, tissue_image(16, 16))
    b = bytearray(path.read_bytes())
    ihdr = b[12:29]  # type + data
    ihdr[4:12] = struct.pack(">II", w, h)
    b[12:29] = ihdr
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path


def _jpeg_declaring(path, w, h):
    save_image(path, tissue_image(64, 64), quality=90)
    b = bytearray(path.read_bytes())
    i = b.find(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("make", [_png_declaring, _jpeg_declaring])
@pytest.mark.parametrize("side", [65500, 40000])
def test_decompression_bomb_header(tmp_path, make, side):
    p = make(tmp_path / ("bomb.png" if make is _png_declaring else "bomb.jpg"), side, side)
    with pytest.raises(InputError, match="impossible for a JPEG/PNG|needs .* GB of memory") as e:
        open_slide(p, um_per_px=1.0).load()
    _named(e, p.name)


def test_decode_needing_more_memory_than_available(tmp_path, monkeypatch):
    from stfeat import _image_checks

    p = save_image(tmp_path / "big.png", tissue_image(300, 300))
    monkeypatch.setattr(_image_checks, "_available_memory", lambda: 100_000)
    with pytest.raises(InputError, match="needs 0.0 GB of memory, more than") as e:
        open_slide(p, um_per_px=1.0)
    assert "pyramidal TIFF" in e.value.fix


def test_truncated_jpeg_with_its_end_marker_kept(tmp_path):
    rng = np.random.default_rng(0)
    p = save_image(tmp_path / "t.jpg", rng.integers(0, 255, (400, 500, 3)).astype(np.uint8), quality=90)
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2] + b"\xff\xd9")
    s = open_slide(p, um_per_px=1.0)  # the header is fine
    with pytest.raises(InputError, match="grey fill") as e:  # was: decoded grey-filled, silently
        s.load()
    _named(e, "t.jpg")


def test_truncated_tiff(tmp_path):
    p = save_pyramid_tiff(tmp_path / "s.tif", tissue_image(512, 512), 0.5)
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 3])
    with pytest.raises(InputError) as e:
        s = open_slide(p)
        for lvl in range(s.level_count):
            s.read_region((256, 256), 400, 64)
            s.read_region((100, 400), 100, 64)
    _named(e, "s.tif")


def test_spaceranger_scalefactors_not_json(tmp_path):
    t = make_spaceranger(tmp_path / "S")
    (t["outs"] / "spatial" / "scalefactors_json.json").write_bytes(b"\x89\xff garbage")
    with pytest.raises(InputError) as e:
        read_sample(tmp_path / "S")
    _named(e, "scalefactors_json.json")


def test_error_naming_a_file_whose_name_is_not_utf8(tmp_path):
    import os

    p = Path(os.fsdecode(bytes(tmp_path) + b"/\xff\xfe.csv"))
    p.write_text("")
    with pytest.raises(InputError) as e:
        read_manifest(p)
    str(e.value).encode("utf-8")  # prints on a UTF-8 terminal (was: UnicodeEncodeError)
    assert e.value.path == p
