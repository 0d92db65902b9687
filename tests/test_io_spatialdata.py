"""SpatialData in and out (extra stfeat[spatialdata]); stfeat's Visium HD and Xenium readers agree with
spatialdata-io's on the same files."""

from __future__ import annotations

import numpy as np
import pytest
from platform_builders import (add_spatialdata_io_extras_hd, add_spatialdata_io_extras_xenium, make_visium_hd,
                               make_xenium)
from test_io_builders import save_image

from stfeat.errors import InputError
from stfeat.io import detect_format, read_sample

sd = pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed (pip install -e '.[spatialdata]')")
sdio = pytest.importorskip("spatialdata_io", reason="the spatialdata extra is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def test_visium_hd_agrees_with_spatialdata_io(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=(8, 16))
    add_spatialdata_io_extras_hd(t["outs"])
    ref = sdio.visium_hd(t["outs"], bin_size=8, load_segmentations_only=False, load_all_images=False)
    table = ref.tables["square_008um"]
    s = read_sample(tmp_path / "HD1", image=save_image(tmp_path / "full.png", t["full"]), bin_size_um=8)
    order = table.obs_names.get_indexer(s.barcodes)
    assert (order >= 0).all() and len(order) == table.n_obs
    np.testing.assert_allclose(s.coords, np.asarray(table.obsm["spatial"], float)[order])
    np.testing.assert_array_equal(s.adata.X.toarray(), np.asarray(table.X[order].todense()))


def test_xenium_agrees_with_spatialdata_io_alignment(tmp_path):
    from spatialdata.transformations import get_transformation_between_coordinate_systems

    t = make_xenium(tmp_path / "X1")
    add_spatialdata_io_extras_xenium(t["outs"])
    ref = sdio.xenium(t["outs"], cells_boundaries=False, nucleus_boundaries=False, cells_labels=False,
                      nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=False,
                      aligned_images=False, cells_as_circles=True)
    # spatialdata-io's own reading of the H&E and its alignment matrix (image -> global)
    ref.images["he"] = sdio.xenium_aligned_image(t["outs"] / "test_he_image.ome.tif",
                                                 t["outs"] / "test_he_imagealignment.csv")
    M = get_transformation_between_coordinate_systems(ref, ref["cell_circles"], ref.images["he"]).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y"))
    circles = ref["cell_circles"]
    xy = np.column_stack([circles.geometry.x, circles.geometry.y]) @ M[:2, :2].T + M[:2, 2]
    s = read_sample(tmp_path / "X1")
    order = circles.index.get_indexer(s.barcodes)
    np.testing.assert_allclose(s.coords, xy[order], atol=1e-6)
    # and stfeat reads spatialdata-io's object back from zarr onto the same H&E pixels
    ref.write(tmp_path / "x1.zarr")
    assert detect_format(tmp_path / "x1.zarr") == "spatialdata"
    back = read_sample(tmp_path / "x1.zarr", um_per_px=0.5)
    o2 = back.adata.obs_names.get_indexer(s.barcodes)
    np.testing.assert_allclose(back.coords[o2], s.coords, atol=1e-4)
    np.testing.assert_array_equal(back.adata.X.toarray()[o2], s.adata.X.toarray())
    assert back.slide.dimensions == s.slide.dimensions


def test_predictions_round_trip_through_spatialdata(tmp_path):
    from stfeat.io.spatialdata_io import write_spatialdata

    t = make_visium_hd(tmp_path / "HD1", bins=(16,))
    s = read_sample(tmp_path / "HD1", image=save_image(tmp_path / "full.png", t["full"]), bin_size_um=16)
    out = write_spatialdata(s.adata, tmp_path / "pred.zarr", sample=s)
    z = sd.read_zarr(out)
    assert set(z.images) == {"he"} and set(z.shapes) == {"spots"} and set(z.tables) == {"table"}
    radius = z.shapes["spots"]["radius"].to_numpy()
    assert np.allclose(radius, 16 / 0.5 / 2)  # bins drawn at their size, in level-0 px
    back = read_sample(out)  # um/px recorded by the writer, converted to the stored image's pixels
    scale = z.images["he"]["scale0"].image.sizes["x"] / s.slide.dimensions[0] if hasattr(z.images["he"], "children") \
        else z.images["he"].sizes["x"] / s.slide.dimensions[0]
    np.testing.assert_allclose(back.coords, s.coords * scale, rtol=1e-6)
    assert back.um_per_px == pytest.approx(s.um_per_px / scale)
    np.testing.assert_array_equal(back.adata.X.toarray(), s.adata.X.toarray())


def test_store_without_pixel_size_is_named(tmp_path):
    t = make_xenium(tmp_path / "X1")
    add_spatialdata_io_extras_xenium(t["outs"])
    ref = sdio.xenium(t["outs"], cells_boundaries=False, nucleus_boundaries=False, cells_labels=False,
                      nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=False,
                      aligned_images=False, cells_as_circles=True)
    ref.images["he"] = sdio.xenium_aligned_image(t["outs"] / "test_he_image.ome.tif",
                                                 t["outs"] / "test_he_imagealignment.csv")
    ref.write(tmp_path / "x1.zarr")
    with pytest.raises(InputError, match="micrometres per pixel of this sample is unknown"):
        read_sample(tmp_path / "x1.zarr")
