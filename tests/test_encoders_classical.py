"""The no-weights ``classical`` encoder: fixed width, deterministic, and it measures morphology."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stfeat.encoders import create_encoder
from stfeat.encoders.classical import N_FEATURES, RGB_FROM_HED, feature_names

NAMES = feature_names()
IDX = {n: i for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def enc():
    return create_encoder("classical")


def _stain_image(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Beer-Lambert: RGB from hematoxylin / eosin optical densities (Ruifrok vectors)."""
    m = np.asarray(RGB_FROM_HED[:2], dtype=np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    od = h[..., None] * m[0] + e[..., None] * m[1]
    return np.clip(np.round(255 * 10 ** (-od)), 0, 255).astype(np.uint8)


def _tissue(n_nuclei: int, eosin: float = 0.4, seed: int = 0, px: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    h = np.zeros((px, px))
    cells = [(r, c) for r in range(8) for c in range(8)]
    for k in rng.permutation(len(cells))[:n_nuclei]:
        cy, cx = 14 + 28 * cells[k][0], 14 + 28 * cells[k][1]
        h[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 0.9
    e = np.full((px, px), eosin) + rng.normal(0, 0.02, (px, px))
    return _stain_image(h, np.clip(e, 0, None))


def _feats(enc, imgs) -> np.ndarray:
    return enc(torch.from_numpy(np.stack(imgs))).numpy()


def test_shape_names_determinism_and_batch_independence(enc):
    assert enc.spec.embed_dim == N_FEATURES == len(NAMES) == len(set(NAMES))
    assert enc.weights_id == "none"
    imgs = [_tissue(n, seed=n) for n in (0, 10, 30)]
    a = _feats(enc, imgs)
    b = _feats(enc, imgs)
    solo = _feats(enc, imgs[1:2])
    assert a.shape == (3, N_FEATURES) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(solo[0], a[1], rtol=1e-5, atol=1e-6)


def test_counts_nuclei_and_hematoxylin(enc):
    ns = (0, 8, 24, 48)
    f = _feats(enc, [_tissue(n, seed=1) for n in ns])
    counts = f[:, IDX["nuclei_per_kpx"]] * 112 * 112 / 1000  # work grid is 112 px
    np.testing.assert_allclose(counts, ns, atol=2)
    for key in ("H_mean", "H_frac_gt0.3", "H_q90", "H_share"):
        assert np.all(np.diff(f[:, IDX[key]]) >= 0), key
    assert f[-1, IDX["H_mean"]] > f[0, IDX["H_mean"]] + 0.05


def test_eosin_tissue_and_texture(enc):
    white = np.full((224, 224, 3), 245, np.uint8)
    pale, pink = _tissue(0, eosin=0.15, seed=2), _tissue(0, eosin=0.6, seed=2)
    f = _feats(enc, [white, pale, pink])
    assert f[0, IDX["tissue_fraction"]] == 0 and f[2, IDX["tissue_fraction"]] > 0.95
    assert f[0, IDX["E_mean"]] < f[1, IDX["E_mean"]] < f[2, IDX["E_mean"]]
    assert f[2, IDX["E_mean"]] > 3 * f[2, IDX["H_mean"]]
    rng = np.random.default_rng(0)
    noisy = np.clip(pink.astype(int) + rng.integers(-40, 40, pink.shape), 0, 255).astype(np.uint8)
    g = _feats(enc, [pink, noisy])
    for key in ("grad_mean_s1", "lap_energy_s1", "locvar_s1", "glcm_contrast_s1"):
        assert g[1, IDX[key]] > 2 * g[0, IDX[key]], key
    lbp = g[:, [IDX[f"lbp{b}_s1"] for b in range(10)]]
    np.testing.assert_allclose(lbp.sum(1), 1.0, rtol=1e-5)


def test_deconvolution_agrees_with_scikit_image(enc):
    """On a real IHC image (hematoxylin + DAB), per-crop H and DAB means track skimage's rgb2hed."""
    data = pytest.importorskip("skimage.data")
    from skimage.color import rgb2hed

    img = data.immunohistochemistry()  # 512 x 512 RGB
    crops = [img[y:y + 224, x:x + 224] for y in (0, 144, 288) for x in (0, 144, 288)]
    f = _feats(enc, crops)
    ref = np.array([rgb2hed(c).reshape(-1, 3).mean(0) for c in crops])
    assert np.corrcoef(f[:, IDX["H_mean"]], ref[:, 0])[0, 1] > 0.95
    assert np.corrcoef(f[:, IDX["DAB_mean"]], ref[:, 2])[0, 1] > 0.95
