"""Small in-code stand-ins for stage-one tests: a numpy slide, a tiny torch encoder, a synthetic sample.

Also importable by a subprocess (``python -c "from test_extract_fakes import ..."`` with tests/ on
sys.path), which the kill-and-resume test uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

UM_PER_PX = 0.5


class FakeSlide:
    """A picklable in-memory slide with the :class:`stfeat.slide.Slide` read interface."""

    def __init__(self, image: np.ndarray, um_per_px: float = UM_PER_PX) -> None:
        self.image = image
        self.um_per_px = um_per_px
        self.um_per_px_source = "test"
        self.path = Path("fake-slide.png")
        self.dimensions = (image.shape[1], image.shape[0])

    def read_region(self, centre_px, field_um, out_px, *, um_per_px=None):
        from PIL import Image

        um = um_per_px or self.um_per_px
        side = max(1, int(round(field_um / um)))
        x0 = int(round(centre_px[0] - side / 2))
        y0 = int(round(centre_px[1] - side / 2))
        h, w = self.image.shape[:2]
        out = np.full((side, side, 3), 255, np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        padded = not (xa == x0 and ya == y0 and xb == x0 + side and yb == y0 + side)
        if xb > xa and yb > ya:
            out[ya - y0:yb - y0, xa - x0:xb - x0] = self.image[ya:yb, xa:xb]
        im = Image.fromarray(out).resize((out_px, out_px), Image.Resampling.BILINEAR)
        return np.asarray(im), padded

    def read_regions(self, centres_px, field_um, out_px, *, um_per_px=None):
        centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        out = np.empty((len(centres), out_px, out_px, 3), np.uint8)
        padded = np.zeros(len(centres), bool)
        for i, c in enumerate(centres):
            out[i], padded[i] = self.read_region(c, field_um, out_px, um_per_px=um_per_px)
        return out, padded


def fake_image(h: int = 400, w: int = 500, seed: int = 0) -> np.ndarray:
    """A smooth random texture: different crops give clearly different features."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((10, 10, 1), np.uint8))[:h, :w].copy()


def tiny_encoder(seed: int = 0, input_px: int = 32, dim: int = 16):
    """A small conv net wrapped in stfeat's Encoder (eval-mode BatchNorm with non-trivial stats)."""
    import torch
    from torch import nn

    from stfeat.encoders.base import Encoder, EncoderSpec

    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, dim, 4, stride=4), nn.BatchNorm2d(dim), nn.ReLU(),
        nn.Conv2d(dim, dim, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        bn = model[1]
        bn.running_mean.copy_(torch.randn(dim, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(dim, generator=g) + 0.5)
    model.eval()
    spec = EncoderSpec(name="tiny-test", family="test", embed_dim=dim, input_px=input_px, um_per_px=None)
    return Encoder(spec, model, weights_id=f"tiny-seed{seed}")


def fake_sample(n: int = 40, seed: int = 0, sample_id: str = "S1", patient: str | None = "P1",
                image: np.ndarray | None = None):
    """A real :class:`stfeat.io.sample.Sample` over a :class:`FakeSlide` (spots on a jittered grid)."""
    import anndata as ad
    import scipy.sparse as sp

    from stfeat import _constants as K
    from stfeat.io.sample import Sample

    img = fake_image(seed=seed) if image is None else image
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(30, w - 30, side), np.linspace(30, h - 30, side))
    coords = np.stack([gx.ravel(), gy.ravel()], 1)[:n] + rng.normal(0, 2, (n, 2))
    a = ad.AnnData(sp.csr_matrix(np.zeros((n, 3), np.float32)))
    a.obs_names = [f"{sample_id}_spot{i:03d}" for i in range(n)]
    a.obsm[K.SPATIAL_KEY] = coords
    a.uns[K.UNS_KEY] = {K.U_SAMPLE_ID: sample_id, K.U_PATIENT: patient or "", K.U_UM_PER_PX: UM_PER_PX,
                        K.U_UM_PER_PX_SOURCE: "test"}
    return Sample(a, FakeSlide(img))
