"""Rendering of a synthetic H&E section: tissue layout, nuclei, fibres, adipocytes, stain mixing.

See :mod:`stfeat.datasets.synthetic` for how a whole dataset is made from these pieces.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REGIONS = ("glass", "stroma", "tumour", "immune", "fat")
GLASS, STROMA, TUMOUR, IMMUNE, FAT = range(5)
CELL_TYPES = ("tumour", "stroma", "immune", "adipocyte")

# Stain vectors in optical-density space (Ruifrok & Johnston 2001), rows H, E, residual.
_STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-variance random field with correlation length ``sigma`` grid cells."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _layout(shape: tuple[int, int], cell_um: float, rng: np.random.Generator) -> np.ndarray:
    """Region labels on the coarse grid: glass, stroma, tumour nests, immune aggregates, fat."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.normal(0, h * 0.03), w / 2 + rng.normal(0, w * 0.03)
    ry, rx = h * rng.uniform(0.40, 0.46), w * rng.uniform(0.40, 0.46)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    tissue = r + 0.12 * _smooth_field(shape, 60.0 / cell_um * 1.5, rng) < 1.0

    lab = np.full(shape, GLASS, dtype=np.uint8)
    lab[tissue] = STROMA
    tum = _smooth_field(shape, 90.0 / cell_um, rng)
    lab[tissue & (tum > rng.uniform(0.2, 0.5))] = TUMOUR
    fat = _smooth_field(shape, 120.0 / cell_um, rng)
    lab[tissue & (fat > rng.uniform(1.0, 1.3)) & (lab != TUMOUR)] = FAT
    # Immune aggregates: round blobs, more often in stroma next to tumour.
    n_agg = int(rng.integers(6, 11))
    for _ in range(n_agg):
        for _try in range(50):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            if lab[y, x] == STROMA:
                break
        rad = rng.uniform(50.0, 100.0) / cell_um
        blob = ((yy - y) ** 2 + (xx - x) ** 2) < (rad * (1 + 0.15 * rng.standard_normal())) ** 2
        lab[blob & tissue & (lab != FAT)] = IMMUNE
    return lab


# (density per um^2, semi-axes um (a, b) mean, sd of log size, optical density of haematoxylin)
_NUCLEI = {
    TUMOUR: (1 / 130.0, (5.5, 4.2), 0.22, 0.95),
    STROMA: (1 / 700.0, (7.0, 1.8), 0.15, 0.85),
    IMMUNE: (1 / 55.0, (2.9, 2.6), 0.10, 1.25),
    FAT: (1 / 4000.0, (5.0, 1.5), 0.10, 0.8),
}


def _nuclei(lab: np.ndarray, cell_um: float, fibre_angle: float, rng: np.random.Generator) -> np.ndarray:
    """Nuclei as rows (x_um, y_um, a_um, b_um, angle, od, region), by a Poisson process per grid cell."""
    rows = []
    area = cell_um * cell_um
    for region, (dens, (a0, b0), sd, od) in _NUCLEI.items():
        ys, xs = np.nonzero(lab == region)
        if len(ys) == 0:
            continue
        n = rng.poisson(dens * area, size=len(ys))
        idx = np.repeat(np.arange(len(ys)), n)
        m = len(idx)
        x = (xs[idx] + rng.random(m)) * cell_um
        y = (ys[idx] + rng.random(m)) * cell_um
        scale = rng.lognormal(0.0, sd, m)
        a = a0 * scale * rng.lognormal(0, 0.08, m)
        b = b0 * scale * rng.lognormal(0, 0.08, m)
        if region == STROMA:
            ang = fibre_angle + np.pi / 2 + rng.normal(0, 0.2, m)  # along the fibres
        else:
            ang = rng.uniform(0, np.pi, m)
        odv = od * rng.lognormal(0, 0.1, m)
        rows.append(np.column_stack([x, y, a, b, ang, odv, np.full(m, region)]))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def _rasterise_nuclei(od_h: np.ndarray, nuclei: np.ndarray, um_per_px: float, rng: np.random.Generator) -> None:
    """Paint each nucleus as a filled ellipse with chromatin texture and a darker rim (in place)."""
    H, W = od_h.shape
    for x, y, a, b, ang, od, _ in nuclei:
        cx, cy, ap, bp = x / um_per_px, y / um_per_px, a / um_per_px, b / um_per_px
        rad = int(np.ceil(ap)) + 1
        x0, x1 = max(int(cx) - rad, 0), min(int(cx) + rad + 1, W)
        y0, y1 = max(int(cy) - rad, 0), min(int(cy) + rad + 1, H)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx - cx, yy - cy
        c, s = np.cos(ang), np.sin(ang)
        u = (dx * c + dy * s) / ap
        v = (-dx * s + dy * c) / bp
        r2 = u * u + v * v
        inside = r2 <= 1.0
        if not inside.any():
            continue
        val = od * (0.75 + 0.35 * r2 + 0.15 * rng.standard_normal(r2.shape))  # rim + chromatin
        patch = od_h[y0:y1, x0:x1]
        np.maximum(patch, np.where(inside, val, 0.0), out=patch)


def _fibres(shape: tuple[int, int], um_per_px: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Wavy collagen fibre density in [0, 1] at full resolution (computed at 1/2 resolution)."""
    from scipy.ndimage import zoom

    h2, w2 = (shape[0] + 1) // 2, (shape[1] + 1) // 2
    step = 2 * um_per_px
    yy, xx = np.mgrid[0:h2, 0:w2].astype(np.float32) * step
    warp = _smooth_field((h2 // 8 + 1, w2 // 8 + 1), 3.0, rng).astype(np.float32)
    warp = zoom(warp, (h2 / warp.shape[0], w2 / warp.shape[1]), order=1)[:h2, :w2]
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / 7.0 * 2 * np.pi + 5.0 * warp
    amp = _smooth_field((h2 // 8 + 1, w2 // 8 + 1), 2.0, rng).astype(np.float32)
    amp = zoom(amp, (h2 / amp.shape[0], w2 / amp.shape[1]), order=1)[:h2, :w2]
    f = 0.5 + 0.5 * np.sin(phase)
    f = f**2 * np.clip(0.6 + 0.3 * amp, 0.1, 1.0) * (0.7 + 0.3 * rng.random((h2, w2), dtype=np.float32))
    return np.repeat(np.repeat(f, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]


def _adipocyte_walls(
    shape: tuple[int, int], um_per_px: float, where: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Thin membranes between 50-90 um adipocytes (Voronoi cell borders), 1 on walls, else 0.

    Only pixels where ``where`` (a full-resolution boolean mask) is true are computed.
    """
    from scipy.spatial import cKDTree

    h, w = shape
    n = int(h * w * um_per_px**2 / (70.0**2)) + 4
    seeds = rng.random((n, 2)) * [w, h]
    out = np.zeros(shape, np.float32)
    ys, xs = np.nonzero(where)
    if len(ys):
        d, _ = cKDTree(seeds).query(np.column_stack([xs, ys]), k=2)
        out[ys, xs] = (d[:, 1] - d[:, 0]) * um_per_px < 2.0
    return out


def render_section(
    *,
    size_um: tuple[float, float] = (1800.0, 1800.0),
    um_per_px: float = 0.5,
    seed: int = 0,
    stain_shift: np.ndarray | None = None,
) -> dict[str, Any]:
    """Render one synthetic H&E section.

    Parameters
    ----------
    size_um
        Width and height of the section in micrometres.
    um_per_px
        Resolution of the image.
    seed
        Seed of this section's random generator.
    stain_shift
        Optional (3,) multiplicative factors on the H, E and residual optical densities
        (per-patient stain variation).

    Returns
    -------
    dict
        ``image`` (H, W, 3) uint8 RGB; ``labels`` coarse region grid (uint8, see :data:`REGIONS`);
        ``cell_um`` its cell size; ``nuclei`` (m, 7) rows (x_um, y_um, a_um, b_um, angle, od,
        region); ``fibre`` (H, W) fibre density (float32).
    """

    rng = np.random.default_rng(seed)
    cell_um = 4.0
    W, H = int(round(size_um[0] / um_per_px)), int(round(size_um[1] / um_per_px))
    gshape = (int(np.ceil(size_um[1] / cell_um)), int(np.ceil(size_um[0] / cell_um)))
    lab = _layout(gshape, cell_um, rng)
    angle = float(rng.uniform(0, np.pi))
    nuclei = _nuclei(lab, cell_um, angle, rng)

    # Full-resolution region map (nearest) and a soft version for smooth colour transitions.

    def soft(mask: np.ndarray) -> np.ndarray:
        from PIL import Image
        from scipy.ndimage import gaussian_filter

        s = gaussian_filter(mask.astype(np.float32), 1.0)
        return np.asarray(Image.fromarray(s, mode="F").resize((W, H), Image.BILINEAR), dtype=np.float32)

    tissue = soft(lab != GLASS)
    fat = soft(lab == FAT)
    tumour = soft(lab == TUMOUR)
    immune = soft(lab == IMMUNE)
    stroma = np.clip(tissue - fat - tumour - immune, 0, 1)

    fib = _fibres((H, W), um_per_px, angle, rng)
    walls = _adipocyte_walls((H, W), um_per_px, fat > 0.01, rng)
    od_e = (
        stroma * (0.13 + 0.30 * fib)
        + tumour * 0.20
        + immune * 0.10
        + fat * 0.30 * walls
    ).astype(np.float32)
    od_h = (0.01 + tumour * 0.07 + immune * 0.05 + stroma * 0.02 * fib).astype(np.float32)
    cells = np.zeros((H, W), np.float32)
    _rasterise_nuclei(cells, nuclei, um_per_px, rng)
    od_h = np.maximum(od_h, cells)
    od_e += 0.05 * cells  # nuclei pick up a little eosin
    od_res = (0.02 + 0.03 * tissue).astype(np.float32)

    shift = np.ones(3) if stain_shift is None else np.asarray(stain_shift, float)
    vec = (_STAINS * shift[:, None]).astype(np.float32)
    img = np.empty((H, W, 3), np.uint8)
    noise = rng.standard_normal((H, W), dtype=np.float32) * np.float32(0.012)
    for c in range(3):  # one channel at a time keeps memory at a few (H, W) float32 maps
        od = od_h * vec[0, c] + od_e * vec[1, c] + od_res * vec[2, c] + noise
        img[..., c] = np.clip(np.float32(255.0) * np.power(np.float32(10.0), -od), 0, 255).astype(np.uint8)
    return {
        "image": img,
        "labels": lab,
        "cell_um": cell_um,
        "nuclei": nuclei,
        "fibre": fib,
        "size_px": (W, H),
        "um_per_px": um_per_px,
    }
