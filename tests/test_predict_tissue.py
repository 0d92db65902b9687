"""The tissue mask of a slide thumbnail (Otsu from scikit-image on saturation) covers the spots."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.prediction import tissue_mask


def _covered(mask: np.ndarray, xy_px: np.ndarray) -> float:
    ij = np.clip(xy_px.astype(int), 0, [mask.shape[1] - 1, mask.shape[0] - 1])
    return float(mask[ij[:, 1], ij[:, 0]].mean())


def test_tissue_mask_on_a_synthetic_thumbnail():
    from PIL import Image

    from stfeat.datasets import hex_spots, render_section
    from stfeat.datasets._tissue import GLASS

    upp = 2.0  # a thumbnail's resolution
    sec = render_section(size_um=(1200.0, 1000.0), um_per_px=upp, seed=3)
    mask = tissue_mask(sec["image"])
    lab = sec["labels"]
    glass = np.asarray(Image.fromarray((lab == GLASS).astype(np.uint8)).resize(
        mask.shape[::-1], Image.NEAREST)).astype(bool)
    assert mask.shape == sec["image"].shape[:2] and mask.dtype == bool
    assert mask[glass].mean() < 0.01  # glass stays out
    spots = hex_spots((1200.0, 1000.0), 100.0, 50.0)
    gi = np.clip((spots[:, 1] / sec["cell_um"]).astype(int), 0, lab.shape[0] - 1)
    gj = np.clip((spots[:, 0] / sec["cell_um"]).astype(int), 0, lab.shape[1] - 1)
    on_tissue = spots[lab[gi, gj] != GLASS, :2] / upp
    assert len(on_tissue) > 50 and _covered(mask, on_tissue) > 0.95
    # a blank slide has no tissue
    assert not tissue_mask(np.full((64, 80, 3), 235, np.uint8)).any()


@pytest.mark.realdata
@pytest.mark.parametrize("folder,sample_id", [("her2st", "C2"), ("her2st_A1", "A1")])
def test_tissue_mask_covers_the_spots_of_her2st_sections(shared_data, folder, sample_id):
    from stfeat.io import resolve_samples

    if not (shared_data / folder).is_dir():
        pytest.skip(f"{shared_data / folder} is absent")
    ref = next(r for r in resolve_samples(shared_data / folder) if r.sample_id == sample_id)
    s = ref.load()
    # a 512 px thumbnail keeps the test fast (predict's grid uses 2048 px: 25-45 s, mostly the
    # median filter); measured on C2-C6 and A1 at both sizes: 16-34% of the slide, 97-99% of
    # the spots inside
    rgb, scale = s.slide.thumbnail(512)
    mask = tissue_mask(np.asarray(rgb))
    assert 0.05 < mask.mean() < 0.6
    assert _covered(mask, np.asarray(s.coords, float) * scale) > 0.95
