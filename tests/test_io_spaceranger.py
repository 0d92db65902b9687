"""Space Ranger outs/: h5 and mtx counts, three positions files, hires mapping, real fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from test_io_builders import make_spaceranger, save_image

from stfeat import _constants as K
from stfeat.io import detect_format, read_sample


@pytest.mark.parametrize(
    "counts_fmt, positions", [("h5", "list"), ("mtx", "csv"), ("h5", "parquet"), ("mtx", "list")]
)
def test_built_outs_all_count_and_position_files(tmp_path, counts_fmt, positions):
    t = make_spaceranger(tmp_path / "S1", counts_fmt=counts_fmt, positions=positions, um_per_px=0.5)
    assert detect_format(tmp_path / "S1") == "spaceranger"
    with pytest.warns(UserWarning, match="hires image at 0.25"):
        s = read_sample(tmp_path / "S1")
    assert s.sample_id == "S1" and s.format == "spaceranger"
    assert list(s.barcodes) == list(t["barcodes"])  # in-tissue only (3 off-tissue positions dropped)
    np.testing.assert_allclose(s.coords, t["coords"])
    np.testing.assert_array_equal(s.adata.X.toarray(), t["X"])
    assert list(s.adata.var_names) == list(t["genes"])
    assert s.adata.var["gene_ids"].iloc[0] == "ENSG00000"
    assert s.um_per_px == pytest.approx(0.5, rel=2e-3) and "spot-lattice" in s.um_per_px_source
    assert not any("apart" in w for w in s.warnings)  # lattice and 65 um / spot_diameter_fullres agree
    assert s.slide.scale == 0.25 and s.meta[K.U_IMAGE_SCALE] == 0.25
    assert any("reduced detail" in w for w in s.warnings)


def test_hires_mapping_reads_the_same_tissue_as_fullres(tmp_path):
    t = make_spaceranger(tmp_path / "S1", um_per_px=0.5)
    full = save_image(tmp_path / "full.png", t["full"])
    with pytest.warns(UserWarning):
        lo = read_sample(tmp_path / "S1")
    hi = read_sample(tmp_path / "S1", image=full)
    assert hi.slide.scale == 1.0 and hi.warnings == []
    assert hi.slide.dimensions == lo.slide.dimensions == t["fullres_size"]
    c = t["coords"][4]
    a, _ = lo.slide.read_region(c, 224, 56, um_per_px=0.5)  # 448 full-res px = 112 hires px -> 56
    b, _ = hi.slide.read_region(c, 224, 56, um_per_px=0.5)
    assert np.abs(a.astype(float) - b.astype(float)).mean() < 6


def test_outs_parent_folder_and_user_um(tmp_path):
    make_spaceranger(tmp_path / "run", counts_fmt="h5")
    with pytest.warns(UserWarning):
        s = read_sample(tmp_path / "run" / "outs", um_per_px=0.31, sample_id="X")
    assert (s.sample_id, s.um_per_px, s.um_per_px_source) == ("X", 0.31, "user")


def test_real_visium_spaceranger_v1_via_hires(shared_data):
    with pytest.warns(UserWarning):
        s = read_sample(shared_data / "fixtures" / "visium_spaceranger_v1")
    assert (s.n_spots, s.adata.n_vars) == (100, 100)
    assert s.slide.path.name == "tissue_hires_image.png" and s.slide.scale == pytest.approx(0.150015)
    assert s.slide.image_dimensions == (2000, 2000)
    # the 100 um lattice (138 px) and 65 um / spot_diameter_fullres agree; 55 um / diameter (0.615) was 15% short
    assert 0.72 <= s.um_per_px <= 0.73, s.um_per_px
    assert "spot-lattice" in s.um_per_px_source and "0.7268" in s.um_per_px_source
    assert (s.coords[:, 0] > 2000).any()  # full-resolution coordinates, not hires pixels
    assert any("4135 of 4235 spots under tissue have no counts" in w for w in s.warnings)


def test_real_squidpy_visium_folder_via_lowres(shared_data):
    with pytest.warns(UserWarning, match="lowres"):
        s = read_sample(shared_data / "fixtures" / "squidpy_visium")
    assert s.format == "spaceranger" and (s.n_spots, s.adata.n_vars) == (100, 100)
    assert s.slide.scale == pytest.approx(0.045004502)
    assert 0.72 <= s.um_per_px <= 0.73, s.um_per_px
