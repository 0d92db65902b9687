"""stfeat.prediction: model save/load, spots from the cache, tissue grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from stfeat.errors import InputError
from stfeat.fitting import fit_report as fit
from stfeat.model import Model, find_model_dir
from stfeat.prediction import predict, tissue_mask
from test_fit_support import toy_dataset, toy_sample, write_toy_cache


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    samples = toy_dataset(tmp / "cache", layout=(("A", 1), ("B", 1), ("C", 1)), n_side=6)
    res = fit(samples, encoder="toy", cache_dir=tmp / "cache", head=[Ridge(alpha=2.0)], genes="hvg:8",
              out_dir=tmp / "out", plots=False)
    return tmp, samples, res


def test_model_roundtrip_and_spot_prediction_from_cache(fitted, tmp_path):
    tmp, samples, res = fitted
    model = Model.load(tmp / "out")  # the fit output holds one model: found without --head
    est = model.estimator
    assert isinstance(est, Ridge) and est.alpha == 2.0
    assert model.genes == res.metrics["genes"]["final"]["genes"]
    assert model.layout["scales"] == ["112", "224"] and model.transform == "log1p_cp10k"
    # a new section of a known patient, cached beforehand
    new, z = toy_sample("N1", "N", n_side=5, seed=3)
    write_toy_cache(tmp / "cache", new, z, shuffle=True)
    a = predict(tmp / "out", new, out=tmp_path / "N1.h5ad")
    assert a.shape == (25, 8) and list(a.var_names) == model.genes
    assert list(a.obs_names) == list(new.barcodes)  # cache rows realigned to the sample's order
    np.testing.assert_allclose(a.obsm["spatial"], new.coords)
    assert a.uns["stfeat"]["features"].startswith("cache ")
    r = [np.corrcoef(a.layers["measured"][:, j], a.X[:, j])[0, 1] for j in range(a.n_vars)]
    assert np.mean(r) > 0.5  # the model carries real signal to an unseen section
    assert (tmp_path / "N1.h5ad").exists() and (tmp_path / "N1.png").stat().st_size > 1000
    import anndata as ad

    b = ad.read_h5ad(tmp_path / "N1.h5ad")
    np.testing.assert_allclose(b.X, a.X)


def test_model_dir_choice_and_errors(fitted, tmp_path):
    tmp, _, _ = fitted
    assert find_model_dir(tmp / "out", head="ridge").name == "toy__ridge"
    with pytest.raises(InputError, match="no model for head 'lgbm'"):
        find_model_dir(tmp / "out", head="lgbm")
    with pytest.raises(InputError, match="holds no fitted model"):
        Model.load(tmp_path)
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not an stfeat model"):
        Model.load(bad)


def test_sample_without_cache_or_image_is_a_clear_error(fitted):
    tmp, _, _ = fitted
    lone, _ = toy_sample("L1", "L", n_side=4)
    with pytest.raises(InputError, match="no H&E image"):
        predict(tmp / "out", lone)
