"""The pixel size from a spot lattice is robust to mistyped rows, reports its residual, refuses degenerate input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_io_builders import make_legacy, make_spaceranger

from stfeat.errors import InputError
from stfeat.io import read_sample


def _edit_spots(t, fn):
    sp = pd.read_csv(t["spots_path"], sep="\t")
    fn(sp)
    sp.to_csv(t["spots_path"], sep="\t", index=False)


def test_one_mistyped_pixel_x_does_not_move_the_pixel_size(tmp_path):
    t = make_legacy(tmp_path, "A1", n=6, um_per_px=1.0)

    def ten_times(sp):
        sp.loc[10, "pixel_x"] *= 10

    _edit_spots(t, ten_times)
    with pytest.warns(UserWarning, match="1 spot.s. lie far from the array lattice .*6x4 \\(line 12\\)"):
        s = read_sample(tmp_path)
    assert s.um_per_px == pytest.approx(1.0, rel=0.01)  # plain least squares: 0.35
    assert "rms residual" in s.um_per_px_source and "6x4" not in list(s.barcodes)


def test_seven_mistyped_rows_do_not_move_the_pixel_size(tmp_path):
    t = make_legacy(tmp_path, "A1", n=8, um_per_px=0.5)

    def seven(sp):
        sp.loc[[5, 11, 17, 23, 29, 40, 51], "pixel_x"] *= 10

    _edit_spots(t, seven)
    with pytest.warns(UserWarning, match="7 spot.s. lie far"):
        s = read_sample(tmp_path)
    assert s.um_per_px == pytest.approx(0.5, rel=0.01)


def test_all_spots_on_one_pixel_is_refused(tmp_path):
    t = make_legacy(tmp_path, "A1")

    def one_pixel(sp):
        sp["pixel_x"], sp["pixel_y"] = 300.0, 300.0

    _edit_spots(t, one_pixel)
    with pytest.raises(InputError, match="degenerate") as e:
        read_sample(tmp_path)
    assert e.value.path.name == "A1_selection.tsv" and "--um-per-px" in e.value.fix


def test_a_sheared_lattice_is_refused(tmp_path):
    t = make_legacy(tmp_path, "A1")

    def swap(sp):
        sp["pixel_x"] = sp["pixel_y"] + 3 * sp["x"]  # both pixel axes follow y

    _edit_spots(t, swap)
    with pytest.raises(InputError, match="do not form the array's lattice"):
        read_sample(tmp_path)


@pytest.mark.realdata
def test_her2st_c2_with_mistyped_rows(her2st, tmp_path):
    root = tmp_path / "her2st"
    (root / "ST-spotfiles").mkdir(parents=True)
    (root / "ST-cnts").mkdir()
    (root / "ST-imgs" / "C").mkdir(parents=True)
    shutil.copy(her2st / "ST-cnts" / "C2.tsv.gz", root / "ST-cnts")
    (root / "ST-imgs" / "C" / "C2").symlink_to(her2st / "ST-imgs" / "C" / "C2")
    sp = pd.read_csv(her2st / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    sp.loc[20, "pixel_x"] *= 10  # plain least squares: 0.569 um/px
    sp.to_csv(root / "ST-spotfiles" / "C2_selection.tsv", sep="\t", index=False)
    with pytest.warns(UserWarning, match="lie far from the array lattice"):
        s = read_sample(root, sample_id="C2")
    assert 0.685 <= s.um_per_px <= 0.695, s.um_per_px
    sp.loc[[30, 40, 50, 60, 70, 80, 90], "pixel_x"] *= 10  # plain least squares: 0.057
    sp.to_csv(root / "ST-spotfiles" / "C2_selection.tsv", sep="\t", index=False)
    with pytest.warns(UserWarning, match="8 spot.s. lie far"):
        s = read_sample(root, sample_id="C2")
    assert 0.685 <= s.um_per_px <= 0.695, s.um_per_px


def test_visium_lattice_checked_against_spot_diameter(tmp_path):
    t = make_spaceranger(tmp_path / "S", um_per_px=0.5)
    sfp = t["outs"] / "spatial" / "scalefactors_json.json"
    sf = json.loads(sfp.read_text())
    sf["spot_diameter_fullres"] = 55.0 / 0.5  # the old 55 um reading: 15% off the lattice
    sfp.write_text(json.dumps(sf))
    with pytest.warns(UserWarning, match="apart; using the lattice"):
        s = read_sample(tmp_path / "S")
    assert s.um_per_px == pytest.approx(0.5, rel=2e-3)


@pytest.mark.parametrize("diameter", [0, -89.4])
def test_visium_zero_or_negative_spot_diameter(tmp_path, diameter):
    t = make_spaceranger(tmp_path / "S", um_per_px=0.5)
    sfp = t["outs"] / "spatial" / "scalefactors_json.json"
    sf = json.loads(sfp.read_text())
    sf["spot_diameter_fullres"] = diameter
    sfp.write_text(json.dumps(sf))
    with pytest.raises(InputError, match="spot_diameter_fullres is") as e:
        read_sample(tmp_path / "S")
    assert e.value.path.name == "scalefactors_json.json"


def test_residual_is_reported(tmp_path):
    make_legacy(tmp_path, "A1", um_per_px=1.0)
    s = read_sample(tmp_path)
    assert "rms residual" in s.um_per_px_source
    assert np.isfinite(s.um_per_px)
