"""Any AnnData with spot positions + an image + um/px; the squidpy fixture; raw-count discovery."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_io_builders import counts, hex_grid, save_image, tissue_image

from stfeat.errors import InputError
from stfeat.io import read_sample


def _h5ad(tmp_path, *, X=None, name="s.h5ad", layers=None, image=True):
    _, _, xy = hex_grid(3, 4, 200.0)
    n = len(xy)
    a = ad.AnnData(X=X if X is not None else counts(n, 6).astype(np.float32),
                   obs=pd.DataFrame(index=[f"b{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(6)]))
    a.obsm["spatial"] = xy
    for k, v in (layers or {}).items():
        a.layers[k] = v
    p = tmp_path / name
    a.write_h5ad(p)
    img = save_image(tmp_path / "he.png", tissue_image(1100, 800)) if image else None
    return p, img, a


def test_h5ad_with_image_and_um(tmp_path):
    p, img, a = _h5ad(tmp_path)
    s = read_sample(p, image=img, um_per_px=0.5)
    assert s.format == "anndata" and s.sample_id == "s" and s.n_spots == a.n_obs
    np.testing.assert_allclose(s.coords, a.obsm["spatial"])
    np.testing.assert_array_equal(s.adata.X.toarray(), a.X)
    assert (s.um_per_px, s.um_per_px_source) == (0.5, "user")


def test_h5ad_raw_counts_found_in_layers(tmp_path):
    raw = counts(12, 6)
    norm = np.log1p(raw / np.maximum(raw.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    p, img, _ = _h5ad(tmp_path, X=norm, layers={"counts": sp.csr_matrix(raw)})
    s = read_sample(p, image=img, um_per_px=1.0)
    np.testing.assert_array_equal(s.adata.X.toarray(), raw)
    assert any("layers['counts']" in n for n in s.meta["provenance"])


def test_h5ad_normalised_only_is_an_error_unless_allowed(tmp_path):
    p, img, _ = _h5ad(tmp_path, X=np.full((12, 6), 0.5, np.float32))
    with pytest.raises(InputError, match="non-integer"):
        read_sample(p, image=img, um_per_px=1.0)
    with pytest.warns(UserWarning, match="allow_normalized"):
        s = read_sample(p, image=img, um_per_px=1.0, allow_normalized=True)
    assert s.adata.X.toarray()[0, 0] == pytest.approx(0.5)


def test_h5ad_without_image_is_expression_only(tmp_path):
    p, _, _ = _h5ad(tmp_path, image=False)
    with pytest.warns(UserWarning, match="no H&E image"):
        s = read_sample(p, um_per_px=1.0)
    assert s.slide is None and s.n_spots == 12


def test_h5ad_without_um_and_unknown_technology_asks_for_it(tmp_path):
    p, img, _ = _h5ad(tmp_path)
    with pytest.raises(InputError) as e:
        read_sample(p, image=img)
    assert "micrometres per pixel" in e.value.problem and "--um-per-px" in e.value.fix


def test_squidpy_h5ad_with_its_image(shared_data):
    d = shared_data / "fixtures" / "squidpy_visium"
    with pytest.raises(InputError, match="non-integer"):  # X is log-normalised, no raw layer
        read_sample(d / "test_data.h5ad", image=d / "test_img.jpg")
    with pytest.warns(UserWarning) as rec:
        s = read_sample(d / "test_data.h5ad", image=d / "test_img.jpg", allow_normalized=True)
    assert (s.n_spots, s.adata.n_vars) == (49, 1999)
    # 65 um / spot_diameter_fullres (0.727 um/px) agrees with the 137 px Visium pitch (0.730); 55 um gave 0.615
    assert 0.72 <= s.um_per_px <= 0.73 and "65 um spot span" in s.um_per_px_source
    assert not any("not in the full-resolution frame" in str(w.message) for w in rec)
    assert s.slide.dimensions == (950, 1717)
    with pytest.warns(UserWarning, match="allow_normalized"):
        s2 = read_sample(d / "test_data.h5ad", image=d / "test_img.jpg", allow_normalized=True, um_per_px=0.7)
    assert s2.um_per_px_source == "user"
