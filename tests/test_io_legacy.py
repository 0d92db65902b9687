"""Legacy ST reader: the five real HER2ST sections, STUtility's MOB1, and a tiny checkout built in code."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from test_io_builders import make_legacy

from stfeat import _constants as K
from stfeat.io import detect_format, read_sample, resolve_samples

# /work/shared/data/README.md: section -> (spots, genes, image w, image h, um/px)
HER2ST = {
    "C2": (187, 15706, 9274, 9911, 0.690),
    "C3": (180, 15821, 9270, 9936, 0.690),
    "C4": (184, 15842, 9278, 9916, 0.690),
    "C5": (181, 15721, 9272, 9901, 0.690),
    "C6": (178, 15772, 9288, 9907, 0.689),
}


@pytest.fixture(scope="module")
def her2st_samples(her2st):
    refs = resolve_samples(her2st)
    with pytest.warns(UserWarning):  # C3..C6 list a few selected spots without counts
        return {r.sample_id: r.load() for r in refs}


def test_her2st_resolves_to_five_sections_of_patient_c(her2st):
    refs = resolve_samples(her2st)
    assert [r.sample_id for r in refs] == ["C2", "C3", "C4", "C5", "C6"]
    assert {r.patient for r in refs} == {"C"}
    assert detect_format(her2st) == "legacy-st"


@pytest.mark.parametrize("section", sorted(HER2ST))
def test_her2st_section_matches_the_table(her2st_samples, section):
    n, g, w, h, um = HER2ST[section]
    s = her2st_samples[section]
    assert (s.n_spots, s.adata.n_vars) == (n, g)
    assert s.slide.dimensions == (w, h)
    assert s.um_per_px == pytest.approx(um, abs=0.01)
    assert "estimated" in s.um_per_px_source
    assert s.patient == "C" and s.format == "legacy-st"
    assert any("patient letter + section number" in p for p in s.meta["provenance"])
    X = s.adata.X
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert np.array_equal(X.data, np.round(X.data)) and X.data.min() > 0
    c = s.coords
    assert c.shape == (n, 2) and (c[:, 0] < w).all() and (c[:, 1] < h).all()
    assert all("x" in b for b in s.barcodes[:5])


def test_her2st_join_uses_array_position_keys(her2st_samples, her2st):
    import pandas as pd

    s = her2st_samples["C2"]
    spots = pd.read_csv(her2st / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    spots.index = spots.x.astype(str) + "x" + spots.y.astype(str)
    np.testing.assert_allclose(s.coords, spots.loc[s.barcodes, ["pixel_x", "pixel_y"]].to_numpy())
    counts = pd.read_csv(her2st / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    b = s.barcodes[7]
    np.testing.assert_array_equal(s.adata[b].X.toarray().ravel(), counts.loc[b, s.adata.var_names].to_numpy())


def test_her2st_missing_counts_are_reported(her2st_samples):
    w = her2st_samples["C3"].warnings
    assert len(w) == 1 and "2 of 182 spots under tissue have no counts" in w[0]


def test_her2st_single_section_by_counts_file_and_user_um(her2st):
    s = read_sample(her2st / "ST-cnts" / "C4.tsv.gz", um_per_px=0.7)
    assert s.sample_id == "C4" and s.patient == "C" and s.n_spots == 184
    assert (s.um_per_px, s.um_per_px_source) == (0.7, "user")


def test_mob1_alignment_table_variant(shared_data):
    s = read_sample(shared_data / "fixtures" / "legacy_st_mob1")
    assert s.sample_id == "MOB1" and s.n_spots == 379 and s.adata.n_vars == 1000
    assert s.slide.dimensions == (1905, 1905)
    # 2k array: checkerboard of array positions, 100 um per step; the README says about 4.6 um/px
    assert 4.2 < s.um_per_px < 4.8 and "2k array" in s.um_per_px_source
    assert s.adata.var_names[0].startswith("ENSMUSG")
    assert s.warnings == []  # 1,555 off-tissue counts rows are expected, not warned about


def test_built_legacy_checkout(tmp_path):
    t = make_legacy(tmp_path, "A1", um_per_px=1.0)
    s = read_sample(tmp_path)  # one section: no sample_id needed
    assert s.sample_id == "A1" and s.patient == "A" and s.format == "legacy-st"
    assert list(s.barcodes) == list(t["keys"])
    np.testing.assert_allclose(s.coords, t["coords"])
    np.testing.assert_array_equal(s.adata.X.toarray(), t["X"])
    assert s.um_per_px == pytest.approx(1.0, rel=0.01)
    assert s.meta[K.U_IMAGE_PATH].endswith("HE_A1.jpg")
    crop, padded = s.slide.read_region(s.coords[0], 100, 32, um_per_px=s.um_per_px)
    assert crop.shape == (32, 32, 3)
