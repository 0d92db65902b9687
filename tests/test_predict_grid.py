"""Stage one -> fit -> predict on a small synthetic slide, through the CLI, incl. --grid."""

from __future__ import annotations

import anndata as ad
import numpy as np
from typer.testing import CliRunner

from stfeat.cli import app
from test_fit_support import toy_sample, write_toy_disk

runner = CliRunner()


def test_extract_fit_predict_grid(tmp_path):
    samples = [toy_sample(sid, p, n_side=5)[0] for sid, p in (("A1", "A"), ("B1", "B"), ("C1", "C"))]
    manifest = write_toy_disk(tmp_path / "data", samples)
    cache = str(tmp_path / "cache")
    res = runner.invoke(app, ["extract", str(manifest), "--encoder", "classical", "--cache-dir", cache,
                              "--scales-um", "112,224", "--k-neighbors", "4", "--device", "cpu", "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "fit"
    res = runner.invoke(app, ["fit", str(manifest), "--encoder", "classical", "--cache-dir", cache, "--head",
                              "ridge", "--genes", "hvg:5", "--out-dir", str(out), "--no-plots"])
    assert res.exit_code == 0, res.output
    one = tmp_path / "data" / "one.csv"  # a one-sample manifest for C1
    one.write_text("\n".join(manifest.read_text().splitlines()[:1] + manifest.read_text().splitlines()[3:4]) + "\n")

    # at the spots: features come from the cache
    res = runner.invoke(app, ["predict", str(out), str(one), "--out", str(tmp_path / "C1.h5ad")])
    assert res.exit_code == 0, res.output
    spots = ad.read_h5ad(tmp_path / "C1.h5ad")
    assert spots.n_obs == 25 and spots.n_vars == 5 and "measured" in spots.layers
    assert spots.uns["stfeat"]["features"].startswith("cache")

    # on a 50 um grid over the tissue: features extracted with the model's encoder
    res = runner.invoke(app, ["predict", str(out), str(one), "--grid-um", "50", "--out", str(tmp_path / "grid.h5ad")])
    assert res.exit_code == 0, res.output
    g = ad.read_h5ad(tmp_path / "grid.h5ad")
    assert g.n_vars == 5 and list(g.var_names) == list(spots.var_names)
    assert "Otsu" in g.uns["stfeat"]["tissue"]
    xy = g.obsm["spatial"]
    # grid points lie on the 50 um (100 px) lattice and inside the tissue disc of the synthetic image
    side = samples[2].coords.max() + 400
    assert np.allclose(np.mod(xy - 300, 100), 0)  # anchored on the first spot (300, 300)
    r = np.hypot(xy[:, 0] - side / 2, xy[:, 1] - side / 2)
    assert r.max() < 0.47 * side
    assert g.n_obs > 1.5 * spots.n_obs  # denser than the measured spots
    # a grid point at a measured spot centre gets that spot's prediction (same crops, same model)
    d = np.linalg.norm(xy[:, None] - samples[2].coords[None], axis=-1)
    gi, si = np.nonzero(d < 1e-6)
    assert len(gi) > 0
    spot_idx = [list(spots.obs_names).index(b) for b in samples[2].barcodes[si]]
    # equal: grid features are rounded to the cache dtype the model was fitted on
    np.testing.assert_allclose(g.X[gi], spots.X[spot_idx], rtol=0, atol=1e-4)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    # a grid is dense: its maps are rasters, one PNG per mapped gene besides the overview; spots keep markers
    per_gene = sorted(p.name for p in tmp_path.glob("grid.*.png"))
    assert per_gene == sorted(f"grid.{gene}.png" for gene in g.var_names)  # 5 genes, all among the top 6
    assert g.uns["stfeat"]["map"] == "raster: the 50 um prediction grid" and "grid.png" in res.output
    assert spots.uns["stfeat"]["map"].startswith("scatter") and not list(tmp_path.glob("C1.*.png"))
