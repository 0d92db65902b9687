"""PNG plots of stage two (matplotlib, Agg backend; nothing is shown on screen).

* :func:`plot_r_distribution`: histogram of per-gene Pearson r.
* :func:`plot_gene_maps`: measured vs predicted expression of some genes over the H&E thumbnail.
* :func:`plot_expression_map`: predicted expression of some genes (e.g. on a dense grid) over the H&E.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

Thumb = "tuple[np.ndarray, float] | None"  # (rgb uint8, thumbnail px per level-0 px)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from stfeat._safe_write import tmp_path

    tmp = tmp_path(path)  # created by us: a planted link at a guessable name is never followed
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def sample_thumbnail(sample: Any, max_px: int = 1200) -> "tuple[np.ndarray, float] | None":
    """(rgb, scale) of the sample's slide, or None when it has no readable image (logged)."""
    slide = getattr(sample, "slide", None)
    if slide is None:
        return None
    try:
        rgb, scale = slide.thumbnail(max_px)
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("no thumbnail for %s (%s): maps drawn without the H&E", getattr(sample, "sample_id", "?"), exc)
        return None
    return np.asarray(rgb), float(scale)


def _spot_size(coords: np.ndarray, scale: float, ax) -> float:
    """Marker area (pt^2) so that markers about touch their neighbours."""
    if len(coords) < 2:
        return 20.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(coords).query(coords, k=2)
    pitch = float(np.median(d[:, 1])) * scale  # display px in data units
    fig = ax.figure
    bbox = ax.get_window_extent().transformed(fig.dpi_scale_trans.inverted())
    xr = np.ptp(ax.get_xlim()) or 1.0
    pts_per_unit = bbox.width * 72 / xr
    return float(max(1.0, (0.9 * pitch * pts_per_unit) ** 2))


def _draw(ax, thumb, coords_px: np.ndarray, values: np.ndarray, title: str, vmin=None, vmax=None, cmap="viridis"):
    scale = 1.0
    if thumb is not None:
        rgb, scale = thumb
        ax.imshow(rgb)
    xy = np.asarray(coords_px, float) * scale
    pad = 0.05 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)  # image convention: y grows downwards
    ax.set_aspect("equal")
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=_spot_size(xy, 1.0, ax), cmap=cmap, vmin=vmin, vmax=vmax,
                    alpha=0.85, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return sc


def plot_gene_maps(thumb, coords_px: np.ndarray, measured: np.ndarray, predicted: np.ndarray,
                   genes: Sequence[str], path: str | Path, *, r: Sequence[float] | None = None,
                   title: str = "") -> Path:
    """One row per gene: measured and predicted values over the H&E thumbnail (shared colour range).

    Parameters
    ----------
    thumb
        ``(rgb, thumbnail px per level-0 px)`` from :func:`sample_thumbnail`, or None.
    coords_px
        (n, 2) spot centres in level-0 px.
    measured, predicted
        (n, g) values of ``genes``.
    r
        Per-gene Pearson r to print in the titles.
    """
    plt = _plt()
    g = len(genes)
    fig, axes = plt.subplots(g, 2, figsize=(7, 3.0 * g), squeeze=False, layout="constrained")
    for i, gene in enumerate(genes):
        m, p = measured[:, i], predicted[:, i]
        lo = float(np.nanmin([np.nanmin(m), np.nanmin(p)]))
        hi = float(np.nanmax([np.nanmax(m), np.nanmax(p)]))
        rs = "" if r is None or not np.isfinite(r[i]) else f" (r = {r[i]:.2f})"
        _draw(axes[i, 0], thumb, coords_px, m, f"{gene} measured", lo, hi)
        sc = _draw(axes[i, 1], thumb, coords_px, p, f"{gene} predicted{rs}", lo, hi)
        fig.colorbar(sc, ax=axes[i, :].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_expression_map(thumb, coords_px: np.ndarray, values: np.ndarray, genes: Sequence[str],
                        path: str | Path, *, title: str = "") -> Path:
    """Predicted values of up to 6 genes over the H&E (one panel each), e.g. for a dense grid."""
    plt = _plt()
    genes = list(genes)[:6]
    ncol = min(3, len(genes))
    nrow = int(np.ceil(len(genes) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 4 * nrow), squeeze=False, layout="constrained")
    for i, gene in enumerate(genes):
        ax = axes[i // ncol, i % ncol]
        sc = _draw(ax, thumb, coords_px, values[:, i], f"{gene} predicted")
        fig.colorbar(sc, ax=ax, shrink=0.7)
    for j in range(len(genes), nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_r_distribution(r: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Histogram of per-gene Pearson r, with the mean and median marked and the NaN count noted."""
    plt = _plt()
    r = np.asarray(r, float)
    finite = r[np.isfinite(r)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if finite.size:
        ax.hist(finite, bins=min(40, max(5, finite.size // 3)), color="#4477aa", edgecolor="white")
        ax.axvline(finite.mean(), color="#cc3311", label=f"mean {finite.mean():.3f}")
        ax.axvline(np.median(finite), color="#ee7733", ls="--", label=f"median {np.median(finite):.3f}")
        ax.legend(fontsize=8)
    n_nan = int(r.size - finite.size)
    ax.set_xlabel("Pearson r per gene (held-out spots)" + (f"; {n_nan} constant -> NaN, not shown" if n_nan else ""))
    ax.set_ylabel("genes")
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))
