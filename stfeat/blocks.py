"""Spatially blocked folds within sections: contiguous blocks of spots with a buffer.

Each section's spots are cut into ``k`` contiguous blocks by k-means on their coordinates in micrometres
(seeded, so deterministic). Fold ``i`` tests block ``i`` of every section; the training spots are all the
others, minus those closer than the buffer to any test spot (nearest test spot within ``buffer_um``), so
that no training spot neighbours a test spot. The buffer defaults to 1.5 x the spot pitch (the median
nearest-neighbour distance): at least one pitch, with margin for the jitter of detected spot centres.

Blocked folds measure how well expression is predicted in an unseen REGION of a seen section; they do
NOT measure generalisation to new patients (neighbouring tissue shares the patient, the staining, the
batch).
"""

from __future__ import annotations

import numpy as np

from stfeat.errors import InputError

BUFFER_PITCHES = 1.5
WITHIN_SECTION_NOTE = ("within-section spatially blocked split: it does NOT measure generalisation to new "
                       "patients (train and test spots share the section, the patient and the staining)")


def spot_pitch_um(coords_um: np.ndarray) -> float:
    """Median nearest-neighbour distance between spots (um); the spot pitch of a regular array."""
    from scipy.spatial import cKDTree

    xy = np.asarray(coords_um, np.float64)
    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def spatial_blocks(coords_um: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Block id (0..k-1) of every spot: k-means on the coordinates (contiguous, deterministic)."""
    from sklearn.cluster import KMeans

    xy = np.asarray(coords_um, np.float64)
    if len(xy) < k:
        raise InputError(None, f"a spatially blocked split into {k} blocks needs at least {k} spots; the section "
                         f"has {len(xy)}.", "use fewer blocks (split block:K with a smaller K).")
    lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(xy)
    # number blocks in a stable order (by centroid x, then y) so fold names do not depend on k-means' labels
    cent = np.array([xy[lab == b].mean(axis=0) for b in range(k)])
    order = np.lexsort((cent[:, 1], cent[:, 0]))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return rank[lab]


def buffered_train(coords_um: np.ndarray, test: np.ndarray, buffer_um: float) -> np.ndarray:
    """Training mask: spots not in ``test`` and farther than ``buffer_um`` from every test spot."""
    from scipy.spatial import cKDTree

    xy = np.asarray(coords_um, np.float64)
    test = np.asarray(test, bool)
    train = ~test
    if test.any() and train.any():
        d, _ = cKDTree(xy[test]).query(xy[train], k=1)
        idx = np.flatnonzero(train)
        train[idx[d <= buffer_um]] = False
    return train


def block_masks(coords_um: np.ndarray, k: int, seed: int = 0,
                buffer_um: float | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(train mask, test mask) per block of one section, and the buffer used (um)."""
    if buffer_um is None:
        buffer_um = BUFFER_PITCHES * spot_pitch_um(coords_um)
    blocks = spatial_blocks(coords_um, k, seed)
    out = []
    for b in range(k):
        test = blocks == b
        out.append((buffered_train(coords_um, test, buffer_um), test))
    return out, float(buffer_um)


def check_buffer(coords_um: np.ndarray, train: np.ndarray, test: np.ndarray, buffer_um: float) -> None:
    """AssertionError if a training spot lies within ``buffer_um`` of a test spot, or a spot is on both sides."""
    from scipy.spatial import cKDTree

    if (train & test).any():
        raise AssertionError("a spot is in both train and test")
    if train.any() and test.any():
        d, _ = cKDTree(np.asarray(coords_um)[test]).query(np.asarray(coords_um)[train], k=1)
        if (d <= buffer_um).any():
            raise AssertionError(f"{int((d <= buffer_um).sum())} training spots within the {buffer_um:.1f} um buffer")
