"""stfeat.datasets: the synthetic dataset has the layout the readers expect, is labelled, deterministic, learnable."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from stfeat.datasets import (
    SYNTHETIC_BANNER,
    gene_panel,
    hex_spots,
    is_synthetic,
    make_synthetic_dataset,
    render_section,
)

SMALL = dict(n_patients=2, sections_per_patient=1, n_genes=80, size_um=(700.0, 700.0), seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", **SMALL)


def _read(ds, sid):
    import anndata as ad

    return ad.read_h5ad(ds.sample_path(sid))


def test_layout_and_labels(small):
    root = small.root
    assert small.sample_ids == ["SYN-P1-S1", "SYN-P2-S1"]
    assert small.patients == ["SYN-P1", "SYN-P2"]
    for sid, patient in zip(small.sample_ids, small.patients):
        assert (root / "st" / f"{sid}.h5ad").is_file()
        assert (root / "wsis" / f"{sid}.tif").is_file()
        meta = json.loads((root / "metadata" / f"{sid}.json").read_text())
        assert meta["synthetic"] is True and "NOT REAL" in meta["dataset_title"]
        assert meta["patient"] == patient
        assert meta["pixel_size_um_embedded"] == 0.5
        a = _read(small, sid)
        assert a.uns["synthetic"]["banner"] == SYNTHETIC_BANNER
        assert all(b.startswith(sid) for b in a.obs_names)
        assert a.obsm["spatial"].dtype == np.float64
        assert a.n_vars == 80 and a.n_obs > 20
        X = a.X.toarray()
        assert np.all(X == np.round(X)) and X.min() >= 0
    lines = (root / "manifest.csv").read_text().splitlines()
    assert lines[0] == "sample_id,patient,path"
    assert lines[1] == "SYN-P1-S1,SYN-P1,st/SYN-P1-S1.h5ad"
    assert is_synthetic(root / "st" / "SYN-P1-S1.h5ad")
    assert not is_synthetic(root.parent.parent)


def test_tiff_pyramid_and_resolution(small):
    import tiffslide

    sl = tiffslide.TiffSlide(small.root / "wsis" / "SYN-P1-S1.tif")
    try:
        assert sl.dimensions == (1400, 1400)  # 700 um at 0.5 um/px
        assert sl.level_count >= 2
        assert float(sl.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        region = np.asarray(sl.read_region((0, 0), 0, (64, 64)).convert("RGB"))
        assert region.shape == (64, 64, 3)
    finally:
        sl.close()


def test_spots_on_hex_lattice_inside_image(small):
    from scipy.spatial import cKDTree

    a = _read(small, "SYN-P1-S1")
    xy = a.obsm["spatial"]
    assert xy.min() >= 0 and xy.max() <= 1400
    d, _ = cKDTree(xy).query(xy, k=2)
    assert np.median(d[:, 1]) == pytest.approx(200.0, rel=1e-6)  # 100 um pitch at 0.5 um/px
    lat = hex_spots((700.0, 700.0), 100.0, 50.0)
    assert np.all(np.diff(np.unique(lat[:, 1])) == pytest.approx(100 * np.sqrt(3) / 2))


def test_deterministic(small, tmp_path):
    import tifffile

    again = make_synthetic_dataset(tmp_path / "again", **SMALL)
    for sid in small.sample_ids:
        a, b = _read(small, sid), _read(again, sid)
        np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
        np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
        ia = tifffile.imread(small.root / "wsis" / f"{sid}.tif")
        ib = tifffile.imread(again.root / "wsis" / f"{sid}.tif")
        np.testing.assert_array_equal(ia, ib)
    other = make_synthetic_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert not np.array_equal(_read(small, "SYN-P1-S1").X.toarray(), _read(other, "SYN-P1-S1").X.toarray())


def test_reuse_and_refuse_foreign_folder(small, tmp_path):
    from stfeat.errors import InputError

    assert make_synthetic_dataset(small.root, **SMALL).reused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(InputError, match="does not hold an stfeat synthetic dataset"):
        make_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "precious.txt").exists()


def test_expression_follows_morphology(small):
    """Markers track the cells under the spot, and the image is darker (more nuclei) where they are."""
    from scipy.stats import spearmanr

    import tifffile

    for sid in small.sample_ids:
        a = _read(small, sid)
        X = a.X.toarray()
        norm = X / X.sum(1, keepdims=True) * 1e4
        role = a.var["role"].to_numpy()
        tum = np.log1p(norm[:, role == "marker:tumour"]).mean(1)
        strom = np.log1p(norm[:, role == "marker:stroma"]).mean(1)
        assert spearmanr(tum, a.obs["syn_n_tumour"]).statistic > 0.6
        assert spearmanr(strom, a.obs["syn_fibre"] + a.obs["syn_n_stroma"]).statistic > 0.4
        img = tifffile.imread(small.root / "wsis" / f"{sid}.tif").astype(float)
        dark = []
        for x, y in a.obsm["spatial"]:
            crop = img[int(y) - 50 : int(y) + 50, int(x) - 50 : int(x) + 50]
            dark.append(255 - crop[..., 0].mean())  # nuclei absorb red
        assert spearmanr(dark, tum).statistic > 0.5


def test_gene_panel_and_render_shapes():
    names, roles = gene_panel(100)
    assert len(names) == len(set(names)) == 100
    assert {"marker:tumour", "marker:immune", "hypoxia", "housekeeping", "noise", "mixed"} <= set(roles)
    with pytest.raises(ValueError, match="at least"):
        gene_panel(10)
    sec = render_section(size_um=(300.0, 200.0), seed=1)
    assert sec["image"].shape == (400, 600, 3) and sec["image"].dtype == np.uint8
    assert sec["labels"].shape == (50, 75)


# Checksums of the generator's output, computed with stfeat/synthetic.py before it moved to
# stfeat/datasets/ (commit 25ae26d). A deliberate change of the generator bumps GENERATOR_VERSION and
# these values together.
SMALL_COUNTS_SHA256 = "57cb3ab92cf8443dd7c003e2f1a7ce370e842655a172660e6d2a6a743a332a52"
RENDER_LABELS_SHA256 = "4f8c12d8c1c542d6beb192032f857928d8c7004db17982ebad151f8fd6b3028e"
RENDER_IMAGE_SUM = 143576252


def test_output_unchanged_since_the_move(small):
    h = hashlib.sha256()
    for sid in small.sample_ids:
        a = _read(small, sid)
        h.update(np.ascontiguousarray(a.X.toarray(), dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(a.obsm["spatial"]).tobytes())
        h.update("\n".join(a.obs_names).encode())
        h.update("\n".join(a.var_names).encode())
        h.update("\n".join(map(str, a.var["role"])).encode())
        for c in a.obs.columns:
            if a.obs[c].dtype.kind in "iu":
                h.update(a.obs[c].to_numpy(np.int64).tobytes())
    assert h.hexdigest() == SMALL_COUNTS_SHA256
    sec = render_section(size_um=(300.0, 200.0), seed=1)
    assert hashlib.sha256(sec["labels"].tobytes()).hexdigest() == RENDER_LABELS_SHA256
    assert len(sec["nuclei"]) == 513
    # The RGB values go through float32 exp/power, whose last bit may differ between CPUs (SIMD
    # kernels): the image is compared by its sum, to a few pixels' worth of rounding.
    assert abs(int(sec["image"].astype(np.int64).sum()) - RENDER_IMAGE_SUM) <= 1000

