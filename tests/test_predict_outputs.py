"""What `stfeat predict` writes (issue 13): grids on the model's extraction engine, SpatialData stores,
uns["spatial"] on every predicted AnnData (also cross-validation's), and the choice of mapped genes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from platform_builders import make_visium_hd

from stfeat.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """A Visium HD sample (8 um bins, with its H&E), toy features in a cache and a ridge model on 4 genes."""
    from sklearn.linear_model import Ridge
    from test_fit_support import write_toy_cache

    from stfeat.features import FeatureSet
    from stfeat.fitting import fit
    from stfeat.io import read_sample

    tmp = tmp_path_factory.mktemp("bins")
    make_visium_hd(tmp / "HD1", bins=(8,), n_genes=6)
    s = read_sample(tmp / "HD1" / "outs", bin_size_um=8)
    cache = tmp / "cache"
    write_toy_cache(cache, s, np.random.default_rng(0).normal(size=(len(s.barcodes), 3)))
    model = fit(FeatureSet.load([s], encoder="toy", cache_dir=cache), head=Ridge(alpha=1.0), genes="hvg:4")
    return s, model, cache


# ------------------------------------------------------------------------------------------ uns["spatial"]
def test_predict_output_plots_with_scanpy_over_its_he(bins):
    sc = pytest.importorskip("scanpy", reason="scanpy is a dev dependency (pip install -e '.[dev]')")
    import matplotlib

    from stfeat.prediction import predict

    matplotlib.use("Agg")
    s, model, cache = bins
    a = predict(model, s, cache_dir=cache)
    e = a.uns["spatial"][s.sample_id]
    assert set(e["images"]) == {"hires", "lowres"} and e["images"]["hires"].dtype == np.uint8
    assert e["scalefactors"]["spot_diameter_fullres"] == pytest.approx(8 / s.um_per_px)
    ax = sc.pl.spatial(a, color=a.var_names[0], show=False)
    ax = ax[0] if isinstance(ax, list) else ax
    assert len(ax.images) == 1  # the H&E under the bins


def test_cross_validation_predictions_carry_uns_spatial(tmp_path):
    from sklearn.linear_model import Ridge
    from test_fit_support import toy_dataset, write_toy_disk

    from stfeat.fitting import fit_report

    samples = toy_dataset(tmp_path / "cache", layout=(("A", 1), ("B", 1), ("C", 1)), n_side=5)
    manifest = write_toy_disk(tmp_path / "data", samples)  # the same samples, with an H&E each
    res = fit_report(manifest, encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge(alpha=1.0)], genes="hvg:5",
                     out_dir=tmp_path / "out", plots=False, conformal=0)
    (cv,) = res.cv.values()
    assert set(cv.predictions) == {"A1", "B1", "C1"}
    for sid, pa in cv.predictions.items():
        e = pa.uns["spatial"][sid]
        assert e["images"]["hires"].ndim == 3 and e["images"]["lowres"].shape[2] == 3
        w = {s.sample_id: s for s in cv.samples.values()}[sid].slide.dimensions[0]
        assert e["scalefactors"]["tissue_hires_scalef"] == pytest.approx(e["images"]["hires"].shape[1] / w)
    # the written predictions/*.h5ad (all samples of a head) carry one library per sample
    import anndata as ad

    (h5,) = (tmp_path / "out" / "predictions").glob("*.h5ad")
    written = ad.read_h5ad(h5)
    assert set(written.uns["spatial"]) == {"A1", "B1", "C1"}
    np.testing.assert_array_equal(written.uns["spatial"]["B1"]["images"]["hires"],
                                  cv.predictions["B1"].uns["spatial"]["B1"]["images"]["hires"])
    # without an image (in-memory toy samples): no uns["spatial"], as before
    from stfeat.crossval import prediction_adata
    from stfeat.features import FeatureSet

    fs = FeatureSet.load(samples, encoder="toy", cache_dir=tmp_path / "cache")
    pa = prediction_adata(fs, "A1", np.zeros((25, 1), np.float32), ["G000"], "log1p_cp10k")
    assert "spatial" not in pa.uns


# ------------------------------------------------------------------------------------------ SpatialData
def test_prediction_as_spatialdata_reads_back(bins, tmp_path):
    sd = pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed "
                                                   "(pip install -e '.[spatialdata]')")
    import anndata as ad

    from stfeat.prediction import predict

    s, model, cache = bins
    out = tmp_path / "pred" / "HD1.h5ad"
    a = predict(model, s, cache_dir=cache, out=out, spatialdata=True, plot=False)
    assert a.uns["stfeat"]["spatialdata"] == "HD1.zarr"
    assert ad.read_h5ad(out).uns["stfeat"]["spatialdata"] == "HD1.zarr"
    z = sd.read_zarr(out.with_suffix(".zarr"))
    assert set(z.images) == {"he"} and set(z.shapes) == {"spots"} and set(z.tables) == {"table"}
    t = z.tables["table"]
    assert list(t.var_names) == list(a.var_names) and t.n_obs == a.n_obs
    np.testing.assert_allclose(np.asarray(t.X), np.asarray(a.X))
    np.testing.assert_allclose(z.shapes["spots"]["radius"].to_numpy(), 8 / s.um_per_px / 2)  # bins at their size
    assert not list(out.parent.glob("*.tmp*"))


def test_spatialdata_without_the_package_names_the_extra(bins, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stfeat.cli import app
    from stfeat.prediction import predict

    s, model, cache = bins
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import spatialdata -> ImportError
    with pytest.raises(InputError, match=r'pip install "stfeat\[spatialdata\]"'):
        predict(model, s, cache_dir=cache, out=tmp_path / "x.h5ad", spatialdata=True)
    assert not (tmp_path / "x.h5ad").exists()  # refused before predicting
    with pytest.raises(InputError, match="no out"):
        monkeypatch.delitem(sys.modules, "spatialdata")
        predict(model, s, cache_dir=cache, spatialdata=True)
    monkeypatch.setitem(sys.modules, "spatialdata", None)
    r = CliRunner().invoke(app, ["predict", "m", str(tmp_path), "--spatialdata"])
    assert r.exit_code != 0 and 'pip install "stfeat[spatialdata]"' in r.output, r.output


# ------------------------------------------------------------------------------------------ map_genes
def test_parse_map_genes():
    from stfeat._predict_outputs import map_gene_order, parse_map_genes

    genes = ["A", "B", "C", "D", "E", "F", "G", "H"]
    assert parse_map_genes(None, genes) == ("top", 6)
    assert parse_map_genes(3, genes) == parse_map_genes("3", genes) == parse_map_genes(["3"], genes) == ("top", 3)
    assert parse_map_genes("all", genes) == parse_map_genes(["ALL"], genes) == ("top", 8)
    assert parse_map_genes(50, genes) == ("top", 8)
    assert parse_map_genes("C,A", genes) == parse_map_genes(["C", "A", "C"], genes) == ("names", [2, 0])
    P = np.array([[0, 1, 0, 5, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0, 0, 0]], float)
    assert map_gene_order(("top", 2), P) == [3, 1]  # by decreasing predicted variance
    assert map_gene_order(("names", [2, 0]), P) == [2, 0]  # as named
    with pytest.raises(InputError, match=r"map_genes names 1 gene\(s\) the model does not predict: \['ZZ'\]"):
        parse_map_genes("A,ZZ", genes)
    with pytest.raises(InputError, match="map_genes 0 maps no gene"):
        parse_map_genes(0, genes)
    with pytest.raises(InputError, match="map_genes takes"):
        parse_map_genes(2.5, genes)


def test_map_genes_chooses_the_per_gene_maps(bins, tmp_path):
    from stfeat.prediction import predict

    s, model, cache = bins
    genes = list(model.genes)
    named = [genes[3], genes[0]]
    out = tmp_path / "named" / "HD1.h5ad"
    a = predict(model, s, cache_dir=cache, out=out, map_genes=named)
    assert sorted(p.name for p in out.parent.glob("*.png")) == sorted(["HD1.png"] + [f"HD1.{g}.png" for g in named])
    assert a.uns["stfeat"]["map_genes"] == ", ".join(named)
    assert a.uns["stfeat"]["map_files"].split(", ") == ["HD1.png"] + [f"HD1.{g}.png" for g in named]
    out = tmp_path / "top1" / "HD1.h5ad"
    a = predict(model, s, cache_dir=cache, out=out, map_genes=1)
    top = genes[int(np.argmax(np.var(np.asarray(a.X), axis=0)))]
    assert sorted(p.name for p in out.parent.glob("*.png")) == sorted(["HD1.png", f"HD1.{top}.png"])
    with pytest.raises(InputError, match="map_genes"):
        predict(model, s, cache_dir=cache, out=tmp_path / "bad.h5ad", map_genes="NOPE")
    assert not (tmp_path / "bad.h5ad").exists()


def test_map_genes_all_on_spots_through_the_cli(tmp_path):
    """Spots: the overview holds 6 genes, so mapping more writes one marker map per gene too (the flag
    is --map-genes, the config key and keyword map_genes)."""
    import anndata as ad
    from sklearn.linear_model import Ridge
    from test_fit_support import toy_dataset, toy_sample, write_toy_cache
    from typer.testing import CliRunner

    from stfeat.cli import app
    from stfeat.fitting import fit_report

    toy_dataset(tmp_path / "cache", layout=(("A", 1), ("B", 1)), n_side=5)
    samples = [toy_sample(sid, p, n_side=5)[0] for sid, p in (("A1", "A"), ("B1", "B"))]
    fit_report(samples, encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge(alpha=1.0)], genes="hvg:8",
               out_dir=tmp_path / "fit", plots=False, conformal=0)
    new, z = toy_sample("N1", "N", n_side=5, seed=3)
    write_toy_cache(tmp_path / "cache", new, z)
    from test_fit_support import write_toy_disk

    manifest = write_toy_disk(tmp_path / "data", [new])
    base = ["predict", str(tmp_path / "fit"), str(manifest), "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "d" / "N1.h5ad")])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "d").glob("*.png")] == ["N1.png"]  # default: 6 genes in the overview
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "all" / "N1.h5ad"), "--map-genes", "all"])
    assert r.exit_code == 0, r.output
    a = ad.read_h5ad(tmp_path / "all" / "N1.h5ad")
    assert len(list((tmp_path / "all").glob("N1.*.png"))) == a.n_vars == 8
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "x.h5ad"), "--map-genes", "NOPE,G000"])
    assert r.exit_code != 0 and "map_genes" in r.output and "NOPE" in r.output, r.output


# ------------------------------------------------------------------------------------------ grid engine
def test_grid_runs_on_the_model_s_extraction_engine(tmp_path, monkeypatch):
    from sklearn.linear_model import Ridge
    from test_dense import _patch_encoder
    from test_io_builders import save_image

    import stfeat.extraction as E
    from stfeat.extraction import extract_caches
    from stfeat.features import FeatureSet
    from stfeat.fitting import fit
    from stfeat.io import read_sample
    from stfeat.prediction import GRID_MAX_POINTS, predict

    t = make_visium_hd(tmp_path / "HD1", bins=(8,), extent_um=240.0)
    s = read_sample(tmp_path / "HD1", image=save_image(tmp_path / "full.png", t["full"]))
    enc = _patch_encoder()
    extract_caches([s], encoder=enc, scales_um=[32.0, 64.0], cache_dir=tmp_path / "c", mode="auto", k_neighbors=4)
    model = fit(FeatureSet.load([s], encoder="patchcnn", cache_dir=tmp_path / "c"), head=Ridge(alpha=1.0),
                genes="hvg:4")
    assert model.encoder_attrs["extraction_mode"] == "dense"  # recorded from the training caches

    modes = []
    real = E.extract_points

    def spy(*a, **kw):
        modes.append(kw.get("mode", "crop"))
        return real(*a, **kw)

    monkeypatch.setattr(E, "extract_points", spy)
    g = predict(model, s, grid_um=8, encoder=enc, cache_dir=tmp_path / "c")
    assert modes == ["dense"] and g.uns["stfeat"]["extraction_mode"] == "dense"
    spots = predict(model, s, cache_dir=tmp_path / "c")
    assert spots.uns["stfeat"]["extraction_mode"] == "dense"
    # the 8 um grid passes through the bin centres; there dense grid features give the bins' predictions
    d = np.linalg.norm(g.obsm["spatial"][:, None] - s.coords[None], axis=-1)
    gi, si = np.nonzero(d < 1e-6)
    assert len(gi) > 100
    r = [np.corrcoef(g.X[gi, j], spots.X[si, j])[0, 1] for j in range(g.n_vars)]
    assert np.median(r) > 0.9, r
    # a model fitted before the mode was recorded: crop, as before
    del model.encoder_attrs["extraction_mode"]
    g = predict(model, s, grid_um=16, encoder=enc, cache_dir=tmp_path / "c")
    assert modes[-1] == "crop" and g.uns["stfeat"]["extraction_mode"] == "crop"
    # the grid size limit is an option, named when exceeded; dense models get millions by default
    with pytest.raises(InputError, match="grid_max_points = 10") as err:
        predict(model, s, grid_um=8, encoder=enc, grid_max_points=10)
    assert "--grid-max-points" in err.value.fix
    assert GRID_MAX_POINTS["dense"] >= 2_000_000 > 600_000 > GRID_MAX_POINTS["crop"] - 100_000
