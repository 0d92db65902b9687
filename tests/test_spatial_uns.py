"""uns["spatial"] in the scverse convention: scanpy's sc.pl.spatial plots stfeat's AnnData over the H&E."""

from __future__ import annotations

import numpy as np
import pytest
from platform_builders import make_visium_hd
from test_io_builders import make_legacy, save_image

from stfeat.io import read_sample
from stfeat.spatial_uns import spatial_uns


def _pred_adata(sample, genes=("G0", "G1")):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    a = ad.AnnData(X=rng.random((sample.n_spots, len(genes)), dtype=np.float32),
                   obs=pd.DataFrame(index=sample.barcodes), var=pd.DataFrame(index=list(genes)))
    a.obsm["spatial"] = sample.coords
    return a


def test_sc_pl_spatial_plots_a_prediction_over_its_he(tmp_path):
    sc = pytest.importorskip("scanpy", reason="scanpy is a dev dependency (pip install -e '.[dev]')")
    import matplotlib

    matplotlib.use("Agg")
    make_legacy(tmp_path / "st", "A1", um_per_px=1.0)
    s = read_sample(tmp_path / "st", sample_id="A1")
    a = _pred_adata(s)
    a.uns["spatial"] = spatial_uns(s)
    e = a.uns["spatial"]["A1"]
    w, h = s.slide.dimensions
    hi = e["images"]["hires"]
    assert max(hi.shape[:2]) == min(2000, max(w, h)) and hi.dtype == np.uint8
    assert e["scalefactors"]["tissue_hires_scalef"] == pytest.approx(hi.shape[1] / w)
    assert e["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(e["images"]["lowres"].shape[1] / w)
    assert e["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100.0 / s.um_per_px)  # 100 um ST spots
    fig = sc.pl.spatial(a, color="G0", show=False, return_fig=True)
    ax = fig.axes[0]
    # the spots are drawn in hires-image pixels: coords x scalef lie inside the axes limits
    xy = s.coords * e["scalefactors"]["tissue_hires_scalef"]
    x0, x1 = sorted(ax.get_xlim())
    assert x0 <= xy[:, 0].min() and xy[:, 0].max() <= x1
    assert len(ax.images) == 1  # the H&E under the spots
    a.write_h5ad(tmp_path / "pred.h5ad")  # images and scale factors survive h5ad


def test_bins_get_their_bin_size_as_diameter(tmp_path):
    t = make_visium_hd(tmp_path / "HD1", bins=(16,))
    s = read_sample(tmp_path / "HD1", image=save_image(tmp_path / "f.png", t["full"]), bin_size_um=16)
    d = spatial_uns(s, library_id="lib")["lib"]["scalefactors"]["spot_diameter_fullres"]
    assert d == pytest.approx(16 / 0.5)
    grid = spatial_uns(s, spot_diameter_um=50.0)[s.sample_id]["scalefactors"]["spot_diameter_fullres"]
    assert grid == pytest.approx(100.0)
