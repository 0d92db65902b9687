"""Visium HD cells (Space Ranger 4 ``segmented_outputs/``) on outs/ folders built in code: one point per cell at
its polygon's area centroid (full-resolution H&E px), its counts and its matrix cell id; bad inputs named."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from platform_builders import add_segmented_outputs, add_spatialdata_io_extras_hd, make_visium_hd
from test_io_builders import save_image

from stfeat.errors import InputError
from stfeat.io import detect_format, read_sample, resolve_samples
from stfeat.io import visium_hd as HD


def _hd(tmp_path, bins=(8, 16), **kw):
    t = make_visium_hd(tmp_path / "HD1", bins=bins)
    add_segmented_outputs(t, **kw)
    return t, save_image(tmp_path / "full.png", t["full"])


def _vertex_mean(geojson) -> np.ndarray:
    feats = json.loads(geojson.read_text())["features"]
    return np.array([np.unique(np.array(f["geometry"]["coordinates"][0]), axis=0).mean(0) for f in feats])


@pytest.mark.parametrize("engine", ["shapely", "numpy"])
def test_cells_are_polygon_centroids_with_their_counts(tmp_path, monkeypatch, engine):
    if engine == "shapely":
        pytest.importorskip("shapely", reason="shapely is not installed (the numpy centroid is tested instead)")
    else:
        monkeypatch.setitem(sys.modules, "shapely", None)  # `import shapely` raises ImportError: the numpy path
    t, full = _hd(tmp_path, hole=True)
    c = t["cells"]
    s = read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert s.format == "visium-hd" and s.sample_id == "HD1" and s.warnings == []
    assert list(s.barcodes) == list(c["barcodes"])  # the matrix's cell ids, in its order
    assert s.barcodes[0].startswith("cellid_") and s.barcodes[0].endswith("-1")
    np.testing.assert_allclose(s.coords, c["coords"], atol=1e-6)  # area centroids, (x, y) full-res px
    # the builder's L-shaped cells (one with a hole) have vertex means well off their centroids
    order = [int(b[7:16]) - 1 for b in s.barcodes]
    assert np.abs(_vertex_mean(c["geojson"])[order] - c["coords"]).max() > 1.0
    np.testing.assert_array_equal(s.adata.X.toarray(), c["X"])
    assert list(s.adata.var_names) == c["genes"]
    assert s.um_per_px == pytest.approx(0.5) and "microns_per_pixel" in s.um_per_px_source
    np.testing.assert_allclose(s.adata.obs["cell_area"], c["area_px"] * 0.25)  # um^2
    assert "bin_size_um" not in s.meta and s.meta["cell_segmentation"] == str(c["geojson"])
    assert s.meta["spot_diameter_um"] == pytest.approx(np.median(2 * np.sqrt(c["area_px"] / np.pi)) * 0.5)
    assert s.slide.scale == 1.0 and s.meta["source_path"] == str(c["seg"])


def test_numpy_and_shapely_centroids_agree_on_multipolygons_and_holes(tmp_path, monkeypatch):
    pytest.importorskip("shapely", reason="shapely is not installed")
    sq = [[0, 0], [0, 4], [4, 4], [4, 0], [0, 0]]  # clockwise square, 16 px^2, centre (2, 2)
    far = [[100, 0], [108, 0], [108, 8], [100, 8], [100, 0]]  # 64 px^2, centre (104, 4)
    hole = [[101, 1], [101, 3], [103, 3], [103, 1], [101, 1]]  # 4 px^2, centre (102, 2)
    polys = [[[np.array(sq, float)], [np.array(far, float), np.array(hole, float)]]]
    want = (16 * np.array([2, 2]) + 64 * np.array([104, 4]) - 4 * np.array([102, 2])) / 76
    line = [[np.array([[0, 0], [2, 2], [4, 4], [0, 0]], float)]]  # zero area: the mean of its vertices
    for engine in ("shapely", "numpy"):
        if engine == "numpy":
            monkeypatch.setitem(sys.modules, "shapely", None)
        xy, area = HD.cell_centroids(polys + [line])
        np.testing.assert_allclose(xy, [want, [2, 2]], atol=1e-9)
        np.testing.assert_allclose(area, [76, 0], atol=1e-9)


def test_multipolygon_cell_in_the_geojson(tmp_path):
    t, full = _hd(tmp_path, n_cells=4)
    gj = t["cells"]["geojson"]
    data = json.loads(gj.read_text())
    f0 = data["features"][0]
    extra = [[10, 10], [14, 10], [14, 14], [10, 14], [10, 10]]  # 16 px^2 at (12, 12)
    f0["geometry"] = {"type": "MultiPolygon", "coordinates": [f0["geometry"]["coordinates"], [extra]]}
    gj.write_text(json.dumps(data))
    s = read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    i = list(s.barcodes).index("cellid_000000001-1")
    j = list(t["cells"]["barcodes"]).index("cellid_000000001-1")
    a = t["cells"]["area_px"][j]
    want = (a * t["cells"]["coords"][j] + 16 * np.array([12.0, 12.0])) / (a + 16)  # area-weighted over both parts
    np.testing.assert_allclose(s.coords[i], want, atol=1e-6)
    np.testing.assert_allclose(s.adata.obs["cell_area"].iloc[i], (a + 16) * 0.25)


def test_cells_chosen_by_keyword_folder_or_st_read_default_stays_8um_bins(tmp_path):
    import stfeat as st

    t, full = _hd(tmp_path)
    seg = t["cells"]["seg"]
    n = len(t["cells"]["barcodes"])
    assert read_sample(tmp_path / "HD1", image=full).meta["bin_size_um"] == 8  # default unchanged
    assert read_sample(tmp_path / "HD1", image=full, bin_size_um=" Cells ").n_spots == n
    assert detect_format(seg) == "visium-hd"
    s = read_sample(seg, image=full)  # pointing at segmented_outputs/ reads the cells
    assert s.n_spots == n and s.sample_id == "HD1"
    assert read_sample(seg, image=full, bin_size_um=16).meta["bin_size_um"] == 16  # an explicit bin size wins
    (s2,) = st.read(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert list(s2.barcodes) == list(t["cells"]["barcodes"])
    (tmp_path / "m.csv").write_text("sample_id,patient,path,image\nHD1c,P1,HD1/outs/segmented_outputs,full.png\n")
    (ref,) = resolve_samples(tmp_path / "m.csv")
    s3 = ref.load()
    assert s3.sample_id == "HD1c" and s3.patient == "P1" and s3.n_spots == n


def test_segmented_only_run_and_scalefactor_fallbacks(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=())  # outs/spatial only, no binned_outputs/
    add_segmented_outputs(t, scalefactors=True)
    assert detect_format(tmp_path / "HD1") == "visium-hd"
    with pytest.raises(InputError, match=r"no square_008um/ folder: this run holds bins of no size and cells") as e:
        read_sample(tmp_path / "HD1")
    assert "'cells'" in e.value.fix
    with pytest.warns(UserWarning, match="reduced detail"):  # hires PNG of outs/spatial, scale from the cells' json
        s = read_sample(tmp_path / "HD1", bin_size_um="cells")
    assert s.slide.scale == 0.5 and s.slide.dimensions == t["size"]
    np.testing.assert_allclose(s.coords, t["cells"]["coords"], atol=1e-6)
    # no scale factors in segmented_outputs/spatial/: a bin's state the micrometres per pixel
    t2 = make_visium_hd(tmp_path / "HD2", bins=(16,))
    add_segmented_outputs(t2, scalefactors=False)
    s2 = read_sample(tmp_path / "HD2", image=save_image(tmp_path / "f2.png", t2["full"]), bin_size_um="cells")
    assert s2.um_per_px == pytest.approx(0.5) and "microns_per_pixel" in s2.um_per_px_source


def test_cells_without_polygon_and_polygons_without_cells_warn_with_counts(tmp_path):
    t, full = _hd(tmp_path, n_cells=20, only_in_matrix=3, only_in_geojson=2)
    with pytest.warns(UserWarning) as rec:
        s = read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    msgs = [str(r.message) for r in rec]
    assert any("filtered_feature_cell_matrix.h5: 3 of 23 cells have counts but no polygon in "
               "cell_segmentations.geojson; dropped them." == m for m in msgs)
    assert any("cell_segmentations.geojson: 2 of 22 cell polygons have no counts in "
               "filtered_feature_cell_matrix.h5" in m for m in msgs)
    assert len(s.warnings) == 2 and list(s.barcodes) == list(t["cells"]["barcodes"])
    np.testing.assert_allclose(s.coords, t["cells"]["coords"], atol=1e-6)


def test_cells_asked_of_a_run_without_segmentation_is_named(tmp_path):
    make_visium_hd(tmp_path / "HD1", bins=(8, 16))
    with pytest.raises(InputError, match=r"no segmented_outputs/ folder: .*holds bins of 8 um, 16 um") as e:
        read_sample(tmp_path / "HD1", bin_size_um="cells")
    assert e.value.path == tmp_path / "HD1" / "outs" / "segmented_outputs" and "bin_size_um=N" in e.value.fix
    with pytest.raises(InputError, match=r"bin_size_um 'cell' is neither a bin size .* nor 'cells'"):
        read_sample(tmp_path / "HD1", bin_size_um="cell")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "not a GeoJSON FeatureCollection"),
    (json.dumps({"type": "FeatureCollection", "features": []}), "no cell polygons"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {"cell_id": 1}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, 9], [0, 0]]]},
         "properties": {}}]}), "no cell polygons"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0]]]},
         "properties": {"cell_id": 1}}]}), "cell_id 1.* malformed polygon"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, 0]]]},
         "properties": {"cell_id": 1}}]}), "fewer than 3 distinct corners"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, 9], [0, 0]]]},
         "properties": {"cell_id": 1}}] * 2}), "more than one polygon"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, "x"], [0, 0]]]},
         "properties": {"cell_id": 1}}]}), "malformed polygon"),
])
def test_bad_geojson_is_named(tmp_path, text, match):
    t, full = _hd(tmp_path, n_cells=5)
    t["cells"]["geojson"].write_text(text)
    with pytest.raises(InputError, match=match) as e:
        read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert e.value.path == t["cells"]["geojson"] and e.value.fix


def test_missing_or_mismatched_segmented_files_are_named(tmp_path):
    t, full = _hd(tmp_path, n_cells=5)
    seg, gj = t["cells"]["seg"], t["cells"]["geojson"]
    data = json.loads(gj.read_text())
    for f in data["features"]:  # ids of another run: no cell of the matrix has a polygon
        f["properties"]["cell_id"] += 1000
    gj.write_text(json.dumps(data))
    with pytest.raises(InputError, match="share no cell id") as e:
        read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert e.value.path == seg / "filtered_feature_cell_matrix.h5"
    gj.unlink()
    with pytest.raises(InputError, match="has no cell_segmentations.geojson") as e:
        read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert e.value.path == gj
    (seg / "filtered_feature_cell_matrix.h5").unlink()
    with pytest.raises(InputError, match="has no filtered_feature_cell_matrix.h5") as e:
        read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert e.value.path == seg / "filtered_feature_cell_matrix.h5"


def test_unknown_pixel_size_of_cells_is_named(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=(), microns_per_pixel=False)
    add_segmented_outputs(t, microns_per_pixel=False)
    full = save_image(tmp_path / "f.png", t["full"])
    with pytest.raises(InputError, match="micrometres per pixel of this sample is unknown") as e:
        read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    assert e.value.path == t["cells"]["seg"] / "spatial" / "scalefactors_json.json"
    s = read_sample(tmp_path / "HD1", image=full, bin_size_um="cells", um_per_px=0.5)
    assert s.um_per_px_source == "user"


def test_cells_agree_with_spatialdata_io(tmp_path):
    import inspect

    pytest.importorskip("spatialdata", reason="spatialdata is not installed (pip install -e '.[spatialdata]')")
    sdio = pytest.importorskip("spatialdata_io", reason="spatialdata-io is not installed (the spatialdata extra)")
    if "load_segmentations_only" not in inspect.signature(sdio.visium_hd).parameters:
        pytest.skip("this spatialdata-io's visium_hd reader does not read segmented_outputs/ (no "
                    "load_segmentations_only); 0.4+ does")
    from spatialdata.transformations import Identity, get_transformation

    t, full = _hd(tmp_path, only_in_matrix=2)
    add_spatialdata_io_extras_hd(t["outs"])
    with pytest.warns(UserWarning):
        s = read_sample(tmp_path / "HD1", image=full, bin_size_um="cells")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sdio.visium_hd(t["outs"], load_segmentations_only=True, load_all_images=False)
    (name,) = [k for k in ref.shapes if k.endswith("cell_segmentations")]
    shapes, table = ref.shapes[name], ref.tables["cell_segmentations"]
    # spatialdata-io puts the polygons in the full-resolution image's frame (Identity), as stfeat's pixels
    frames = get_transformation(shapes, get_all=True)
    assert any(isinstance(tr, Identity) for tr in frames.values())
    cen = shapes.geometry.centroid
    order = shapes.index.get_indexer(s.barcodes)
    assert (order >= 0).all() and len(order) == len(shapes)  # the same cells (matrix cells with a polygon)
    np.testing.assert_allclose(s.coords, np.column_stack([cen.x, cen.y])[order], atol=1e-6)
    rows = table.obs_names.get_indexer(s.barcodes)
    np.testing.assert_array_equal(s.adata.X.toarray(), np.asarray(table.X[rows].todense()))


def test_extract_runs_on_cells_from_the_cli(tmp_path):
    import warnings

    import h5py
    from typer.testing import CliRunner

    from stfeat.cli import app

    t = make_visium_hd(tmp_path / "HD1", bins=(8,), extent_um=160.0)
    add_segmented_outputs(t, n_cells=12)
    (tmp_path / "m.csv").write_text("sample_id,patient,path\nHD1cells,P1,HD1/outs/segmented_outputs\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(app, ["extract", str(tmp_path / "m.csv"), "--encoder", "resnet50-trunc",
                                     "--no-pretrained", "--scales-um", "32", "--cache-dir", str(tmp_path / "c"),
                                     "--k-neighbors", "0"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "c" / "resnet50-trunc" / "HD1cells.h5", "r") as f:
        assert f["done/32"][...].all() and f["features/32"].shape[0] == 12
        assert np.isfinite(f["features/32"][...]).all()


def test_manifest_column_and_folder_name_choose_cells(tmp_path):
    """A manifest `bin_size_um` of `cells`, and a path to outs/segmented_outputs named after its sample."""
    import stfeat as st
    from platform_builders import add_segmented_outputs, make_visium_hd

    t = make_visium_hd(tmp_path / "HD1")
    add_segmented_outputs(t)
    outs = next(p for p in (tmp_path / "HD1").rglob("outs") if p.is_dir())
    m = tmp_path / "m.csv"
    m.write_text(f"sample_id,path,bin_size_um\nHD1,{outs.parent},cells\n")
    (s,) = st.read(m)
    assert s.sample_id == "HD1" and str(s.barcodes[0]).startswith("cellid_")
    (s2,) = st.read(outs / "segmented_outputs")
    assert s2.sample_id == "HD1"
