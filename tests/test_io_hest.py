"""HEST-1k layout (built in code with pyramidal TIFFs) and the DeepSpot-style NCBI858 derivative."""

from __future__ import annotations

import numpy as np
import pytest
from test_io_builders import make_hest

from stfeat.errors import InputError
from stfeat.io import detect_format, read_sample, resolve_samples


@pytest.fixture
def hest_root(tmp_path):
    root = tmp_path / "hest"
    return root, make_hest(root, ("TENX1", "TENX2"), um_per_px=0.5)


def test_hest_root_resolves_one_ref_per_h5ad(hest_root):
    root, truth = hest_root
    refs = resolve_samples(root)
    assert [(r.sample_id, r.patient) for r in refs] == [("TENX1", "P0"), ("TENX2", "P1")]
    assert detect_format(root) == "hest" and detect_format(root / "st" / "TENX1.h5ad") == "hest"


def test_hest_sample_reads_counts_coords_pyramid_and_metadata_um(hest_root):
    root, truth = hest_root
    s = read_sample(root, sample_id="TENX2")
    t = truth["TENX2"]
    assert s.format == "hest" and s.patient == "P1" and s.n_spots == t["n"]
    np.testing.assert_allclose(s.coords, t["coords"])
    np.testing.assert_array_equal(s.adata.X.toarray(), t["X"])
    assert s.slide.level_count == 3 and s.slide.dimensions == t["size"]
    # HEST's own estimate wins over the TIFF tags (HEST reads it first too)
    assert s.um_per_px == pytest.approx(0.505) and "pixel_size_um_estimated" in s.um_per_px_source
    assert s.slide.um_per_px == pytest.approx(0.5) and s.meta["st_technology"] == "Visium"
    centre = s.coords[np.argmin(((s.coords - s.coords.mean(0)) ** 2).sum(1))]
    crop, padded = s.slide.read_region(centre, 112, 64, um_per_px=s.um_per_px)
    assert crop.shape == (64, 64, 3) and not padded


def test_hest_refs_load(hest_root):
    root, _ = hest_root
    samples = [r.load() for r in resolve_samples(root)]
    assert [s.sample_id for s in samples] == ["TENX1", "TENX2"]


def test_hest_um_from_tiff_tags_when_metadata_lacks_it(tmp_path):
    make_hest(tmp_path, ("A",), um_per_px=0.25, meta_um=False)
    s = read_sample(tmp_path)
    assert s.um_per_px == pytest.approx(0.25)
    assert s.um_per_px_source in ("tiffslide-mpp", "openslide-mpp", "tiff-resolution")


def test_hest_um_from_visium_lattice_when_nothing_states_it(tmp_path):
    make_hest(tmp_path, ("A",), um_per_px=0.4, meta_um=False, tiff_um=False)
    s = read_sample(tmp_path)
    assert s.um_per_px == pytest.approx(0.4, rel=1e-6) and "estimated" in s.um_per_px_source


def test_hest_root_with_many_samples_needs_an_id(hest_root):
    root, _ = hest_root
    with pytest.raises(InputError, match="holds 2 samples"):
        read_sample(root)


def test_ncbi858_derivative_needs_um_per_px(shared_data):
    d = shared_data / "fixtures" / "hest_xenium_NCBI858"
    with pytest.raises(InputError) as e:
        read_sample(d)
    assert "NCBI858.h5ad" in str(e.value) and "--um-per-px" in e.value.fix


def test_ncbi858_derivative_with_user_um(shared_data):
    s = read_sample(shared_data / "fixtures" / "hest_xenium_NCBI858", um_per_px=2.125)
    assert (s.n_spots, s.adata.n_vars) == (200, 338)
    assert (s.um_per_px, s.um_per_px_source) == (2.125, "user")
    assert s.slide.dimensions == (1431, 1249)
    # x_pixel is the image row (SpaGCN/DeepSpot): every cell then lies inside the JPEG
    w, h = s.slide.dimensions
    assert (s.coords[:, 0] < w).all() and (s.coords[:, 1] < h).all()
    assert any("x_pixel is the image row" in p for p in s.meta["provenance"])
