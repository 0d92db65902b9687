"""Dense maps as images: stfeat.pl.rasterize / raster_map, and predict's per-gene PNGs for bins, cells, grids."""

from __future__ import annotations

import time

import numpy as np
import pytest
from matplotlib.figure import Figure

from stfeat import pl
from stfeat.errors import InputError


def _lattice(nx: int, ny: int, step: float, origin=(100.0, 200.0)):
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny))  # ii: column (x), jj: row (y)
    ii, jj = ii.ravel(), jj.ravel()
    xy = np.c_[origin[0] + ii * step, origin[1] + jj * step]
    return ii, jj, xy


def test_lattice_values_land_in_their_cells_and_empty_cells_are_transparent():
    step = 10.0
    ii, jj, xy = _lattice(5, 4, step)
    vals = (10 * jj + ii).astype(float)  # a distinct value per lattice node
    keep = np.ones(len(xy), bool)
    gone = [(1, 2), (4, 0)]  # (x, y) nodes without a point
    for gx, gy in gone:
        keep &= ~((ii == gx) & (jj == gy))
    perm = np.random.default_rng(0).permutation(int(keep.sum()))  # order of the points does not matter
    r = pl.rasterize(vals[keep][perm], xy[keep][perm], step)
    assert r.grid.shape == (4, 5, 1) and r.factor == 1 and r.cell_px == step
    for x, y, v in zip(ii[keep], jj[keep], vals[keep]):
        assert r.grid[y, x, 0] == v and r.count[y, x] == 1
    for gx, gy in gone:
        assert np.isnan(r.grid[gy, gx, 0]) and r.count[gy, gx] == 0
    assert int(np.isnan(r.grid).sum()) == len(gone)
    # the image covers the bins edge to edge: first centre 100 -> left edge 95, 5 bins of 10 px
    assert r.extent == (95.0, 145.0, 235.0, 195.0)
    rgba = r.rgba(0)
    assert rgba.shape == (4, 5, 4) and rgba.dtype == np.uint8
    for gx, gy in gone:
        assert rgba[gy, gx, 3] == 0  # transparent: the H&E shows through
    assert (rgba[..., 3][r.count > 0] == 255).all()
    # colours follow the values: the smallest value gets the colormap's first colour, the largest its last
    import matplotlib

    cm = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(rgba[0, 0], cm(0.0, bytes=True))
    np.testing.assert_array_equal(rgba[3, 4], cm(1.0, bytes=True))


def test_cells_average_per_pixel_and_nan_values_are_left_out():
    xy = np.array([[0.0, 0.0], [3.0, 1.0], [20.0, 0.0], [21.0, 2.0], [0.0, 20.0]])
    vals = np.array([[1.0, 5.0], [3.0, 7.0], [4.0, np.nan], [6.0, 2.0], [np.nan, np.nan]])
    r = pl.rasterize(vals, xy, 10.0)
    assert r.grid.shape == (3, 3, 2)
    np.testing.assert_allclose(r.grid[0, 0], [2.0, 6.0])  # two cells in one pixel: their mean
    np.testing.assert_allclose(r.grid[0, 2], [5.0, 2.0])  # the NaN value does not count
    assert r.count[2, 0] == 1 and np.isnan(r.grid[2, 0]).all()  # a cell with no value stays empty
    assert np.isnan(r.grid[1]).all() and np.isnan(r.grid[0, 1]).all()


def test_fill_paints_gaps_next_to_cells_only():
    xy = np.array([[0.0, 0.0], [20.0, 0.0], [60.0, 0.0]])  # pixels 0, 2 and 6 of a 10 px grid
    r = pl.rasterize(np.array([1.0, 3.0, 8.0]), xy, 10.0, fill=1)
    row = r.grid[0, :, 0]
    np.testing.assert_allclose(row[[0, 2, 6]], [1.0, 3.0, 8.0])  # own pixels keep their own values
    np.testing.assert_allclose(row[[1, 3, 5]], [2.0, 3.0, 8.0])  # a gap takes the mean of its 3 x 3 window
    assert np.isnan(row[4])  # farther than one pixel from any point: still empty
    assert r.count[0, 1] == 0  # counts stay the points' own
    with pytest.raises(InputError, match="fill"):
        pl.rasterize(np.ones(3), xy, 10.0, fill=-1)


def test_a_lattice_too_fine_for_max_side_is_averaged_down_and_says_so():
    ii, jj, xy = _lattice(10, 7, 4.0, origin=(0.0, 0.0))
    vals = ii.astype(float)
    r = pl.rasterize(vals, xy, 4.0, max_side=4)
    assert r.factor == 3 and r.grid.shape == (3, 4, 1) and r.cell_px == 12.0
    np.testing.assert_allclose(r.grid[0, :, 0], [1.0, 4.0, 7.0, 9.0])  # means of columns 0-2, 3-5, 6-8, 9
    assert r.count[0, 0] == 9 and r.count[2, 3] == 1
    fig = pl.raster_map(vals, xy, 4.0, None, genes=["G"], max_side=4, um_per_px=0.5)
    assert "averaged down 3x" in fig.axes[0].get_title() and "6 um" in fig.axes[0].get_title()


def test_bad_input_is_an_input_error():
    xy = np.zeros((3, 2))
    for vals, coords, step, what in [
        (np.ones(4), xy, 1.0, "coordinates of shape"),
        (np.ones(3), np.zeros((3, 3)), 1.0, "coordinates of shape"),
        (np.ones(0), np.zeros((0, 2)), 1.0, "no points"),
        (np.ones(3), np.array([[0, 0], [np.nan, 1], [2, 2]]), 1.0, "non-finite position"),
        (np.ones(3), xy, 0.0, "positive number"),
        (np.ones(3), xy, float("nan"), "positive number"),
        (np.ones(3), xy, "8um", "positive number"),
    ]:
        with pytest.raises(InputError, match=what) as e:
            pl.rasterize(vals, coords, step)
        assert e.value.fix
    with pytest.raises(InputError, match="one name per column"):
        pl.raster_map(np.ones((3, 2)), np.arange(6.0).reshape(3, 2), 1.0, genes=["A"])


def test_a_million_points_rasterise_and_draw_fast(tmp_path):
    n_side = 1000  # 1,000,000 bins of 8 um at 0.25 um/px (32 px), as on a Visium HD slide
    g = np.arange(n_side, dtype=np.float64) * 32.0 + 16.0
    gx, gy = np.meshgrid(g, g)
    xy = np.c_[gx.ravel(), gy.ravel()]
    vals = np.sin(xy[:, 0] / 3000.0) * np.cos(xy[:, 1] / 5000.0)
    thumb = (np.full((800, 800, 3), 230, np.uint8), 800 / 32000.0)
    t0 = time.perf_counter()
    r = pl.rasterize(vals, xy, 32.0)
    t_raster = time.perf_counter() - t0
    fig = pl.raster_map(vals, xy, 32.0, thumb, genes=["GENE"], um_per_px=0.25, save=tmp_path / "m.png")
    t_all = time.perf_counter() - t0
    print(f"1,000,000 points: rasterize {t_raster:.2f} s; rasterize again + figure + PNG {t_all - t_raster:.2f} s")
    assert r.grid.shape == (1000, 1000, 1) and not np.isnan(r.grid).any()
    np.testing.assert_allclose(r.grid[:, :, 0].ravel(), vals, rtol=1e-6, atol=1e-6)  # row-major y, x = input
    assert isinstance(fig, Figure)
    from PIL import Image

    with Image.open(tmp_path / "m.png") as im:
        assert im.format == "PNG" and 300 < im.size[0] < 3000
    assert t_all < 20.0  # generous: typically well under 2 s


# ---------------------------------------------------------------------------------------- predict
def test_map_style_follows_extraction_s_density_rule(tmp_path):
    from platform_builders import make_visium_hd, make_xenium
    from test_fit_support import toy_sample

    from stfeat.io import read_sample
    from stfeat.prediction import map_step_px

    spots, _ = toy_sample("S1", "S", n_side=4)  # 100 um pitch: spots
    step, fill, how = map_step_px(spots, spots.coords, None)
    assert step is None and how.startswith("scatter")
    step, fill, how = map_step_px(spots, spots.coords, 25.0)  # a grid is always a lattice
    assert step == 50.0 and fill == 0 and "grid" in how
    make_visium_hd(tmp_path / "HD", bins=(16,))
    hd = read_sample(tmp_path / "HD" / "outs", bin_size_um=16)
    step, fill, how = map_step_px(hd, hd.coords, None)
    assert step == pytest.approx(16 / 0.5) and fill == 0 and "16 um bins" in how
    make_xenium(tmp_path / "XE", n_cells=80)
    xe = read_sample(tmp_path / "XE" / "outs")
    step, fill, how = map_step_px(xe, xe.coords, None)
    assert step is not None and 0 < step * xe.um_per_px <= 50 and fill == 1 and "mean of the points" in how


def test_predict_on_visium_hd_bins_writes_per_gene_raster_pngs(tmp_path):
    from PIL import Image
    from platform_builders import make_visium_hd
    from sklearn.linear_model import Ridge
    from test_fit_support import write_toy_cache

    from stfeat.features import FeatureSet
    from stfeat.fitting import fit
    from stfeat.io import read_sample
    from stfeat.prediction import predict

    make_visium_hd(tmp_path / "HD1", bins=(8,), n_genes=6)
    s = read_sample(tmp_path / "HD1" / "outs", bin_size_um=8)
    assert len(s.barcodes) == 380  # 20 x 20 bins of 8 um, the first row off tissue
    cache = tmp_path / "cache"
    write_toy_cache(cache, s, np.random.default_rng(0).normal(size=(len(s.barcodes), 3)))
    model = fit(FeatureSet.load([s], encoder="toy", cache_dir=cache), head=Ridge(alpha=1.0), genes="hvg:4")
    out = tmp_path / "pred" / "HD1.h5ad"
    a = predict(model, s, out=out, cache_dir=cache)
    assert a.uns["stfeat"]["map"] == "raster: 8 um bins"
    order = np.argsort(-np.var(np.asarray(a.X), axis=0), kind="stable")
    genes = [a.var_names[i] for i in order]
    assert len(genes) == 4
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == sorted(["HD1.png"] + [f"HD1.{g}.png" for g in genes])
    assert a.uns["stfeat"]["map_files"].split(", ") == ["HD1.png"] + [f"HD1.{g}.png" for g in genes]
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes leave no temporary file behind
    for name in pngs:
        with Image.open(out.parent / name) as im:
            im.load()
            assert im.format == "PNG" and 200 < im.size[0] < 4000 and 200 < im.size[1] < 4000
    # the map is an image of the bins over the H&E: the per-gene PNG is not blank
    with Image.open(out.parent / f"HD1.{genes[0]}.png") as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.std() > 10


def test_gene_map_names_are_safe_and_distinct(tmp_path):
    from stfeat.prediction import gene_map_paths

    p = gene_map_paths(tmp_path / "x.h5ad", ["A/B", "A:B", "..", "HLA-A", "a b"])
    names = [v.name for v in p.values()]
    # "a b" -> a_b_3: on a case-insensitive file system a_b would overwrite A_B
    assert names == ["x.A_B.png", "x.A_B_2.png", "x.gene.png", "x.HLA-A.png", "x.a_b_3.png"]
    assert all(v.parent == tmp_path for v in p.values())
