"""Plots (``st.pl``): every function returns a matplotlib Figure; ``save=PATH`` writes a PNG, ``show=True``
displays it (in a notebook).

* :func:`pcc`: per-gene Pearson r of a :class:`~stfeat.crossval.CVResult` (or several), per held-out fold.
* :func:`maps`: measured vs predicted genes of one held-out sample of a CVResult, over the H&E.
* :func:`r_distribution`, :func:`gene_maps`, :func:`expression_map`: the same from plain arrays.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no backend switch), so they work
headless and in notebooks alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

Thumb = "tuple[np.ndarray, float] | None"  # (rgb uint8, thumbnail px per level-0 px)


def _figure(figsize, nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _finish(fig, save: str | Path | None, show: bool):
    """Write ``fig`` to ``save`` atomically (PNG) and/or display it; return it."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        from stfeat._safe_write import tmp_path

        tmp = tmp_path(path)  # created by us: a planted link at a guessable name is never followed
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    if show:
        try:
            from IPython.display import display

            display(fig)
        except ImportError:  # pragma: no cover - outside IPython there is no screen to show on
            log.info("show=True needs IPython; figure not shown")
    return fig


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


def gene_maps(thumb, coords_px: np.ndarray, measured: np.ndarray, predicted: np.ndarray,
              genes: Sequence[str], *, r: Sequence[float] | None = None, title: str = "",
              save: str | Path | None = None, show: bool = False):
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
    g = len(genes)
    fig, axes = _figure((7, 3.0 * g), g, 2)
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
    return _finish(fig, save, show)


def expression_map(thumb, coords_px: np.ndarray, values: np.ndarray, genes: Sequence[str], *, title: str = "",
                   save: str | Path | None = None, show: bool = False):
    """Predicted values of up to 6 genes over the H&E (one panel each), e.g. for a dense grid."""
    genes = list(genes)[:6]
    ncol = min(3, len(genes))
    nrow = int(np.ceil(len(genes) / ncol))
    fig, axes = _figure((4 * ncol, 4 * nrow), nrow, ncol)
    for i, gene in enumerate(genes):
        ax = axes[i // ncol, i % ncol]
        sc = _draw(ax, thumb, coords_px, values[:, i], f"{gene} predicted")
        fig.colorbar(sc, ax=ax, shrink=0.7)
    for j in range(len(genes), nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save, show)


def r_distribution(r: np.ndarray, *, title: str = "", save: str | Path | None = None, show: bool = False):
    """Histogram of per-gene Pearson r, with the mean and median marked and the NaN count noted."""
    r = np.asarray(r, float)
    finite = r[np.isfinite(r)]
    fig, axes = _figure((5, 3.5))
    ax = axes[0, 0]
    if finite.size:
        ax.hist(finite, bins=min(40, max(5, finite.size // 3)), color="#4477aa", edgecolor="white")
        ax.axvline(finite.mean(), color="#cc3311", label=f"mean {finite.mean():.3f}")
        ax.axvline(np.median(finite), color="#ee7733", ls="--", label=f"median {np.median(finite):.3f}")
        ax.legend(fontsize=8)
    n_nan = int(r.size - finite.size)
    ax.set_xlabel("Pearson r per gene (held-out spots)" + (f"; {n_nan} constant -> NaN, not shown" if n_nan else ""))
    ax.set_ylabel("genes")
    ax.set_title(title, fontsize=9)
    return _finish(fig, save, show)


# ------------------------------------------------------------------------------ from results
def pcc(cv: Any, *, save: str | Path | None = None, show: bool = False):
    """Per-gene held-out Pearson r of one or several CVResults: one box per head (x fold), mean marked."""
    cvs = list(cv) if isinstance(cv, (list, tuple)) else [cv]
    labels, data = [], []
    for c in cvs:
        for fold, g in c.per_gene.groupby("fold", sort=False):
            r = g["pearson_r"].to_numpy(float)
            data.append(r[np.isfinite(r)])
            labels.append(f"{c.head}\n{fold}" if len(cvs) > 1 else str(fold))
    fig, axes = _figure((max(4.0, 0.7 * len(data) + 2), 3.5))
    ax = axes[0, 0]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("Pearson r per gene (held out)")
    split = cvs[0].plan.mode
    ax.set_title(" / ".join(f"{c.head}: {c.mean_r:.3f}" for c in cvs) + f"  ({split}, {cvs[0].encoder})", fontsize=9)
    return _finish(fig, save, show)


def maps(cv: Any, sample_id: str, *, genes: Sequence[str] | None = None, n: int = 3,
         save: str | Path | None = None, show: bool = False):
    """Measured vs predicted maps of a held-out sample of ``cv`` over its H&E: ``genes``, or the ``n``
    best and ``n`` worst genes by held-out r."""
    if sample_id not in cv.predictions:
        raise KeyError(f"{sample_id!r} is not a held-out sample of this result; "
                       f"choose one of {sorted(cv.predictions)}")
    a = cv.predictions[sample_id]
    r_gene = cv.per_gene.groupby("gene", sort=False)["pearson_r"].mean()
    if genes is None:
        ranked = r_gene.reindex(list(a.var_names)).dropna().sort_values(ascending=False)
        genes = list(ranked.index[:n]) + [g for g in ranked.index[::-1][:n] if g not in ranked.index[:n]]
    missing = [g for g in genes if g not in a.var_names]
    if missing:
        raise KeyError(f"genes {missing} were not predicted for {sample_id}; predicted: {list(a.var_names)[:10]} ...")
    idx = [list(a.var_names).index(g) for g in genes]
    thumb = sample_thumbnail(cv.samples.get(sample_id)) if getattr(cv, "samples", None) else None
    return gene_maps(thumb, np.asarray(a.obsm["spatial"]), np.asarray(a.layers["measured"])[:, idx],
                     np.asarray(a.X)[:, idx], genes, r=[float(r_gene.get(g, np.nan)) for g in genes],
                     title=f"{sample_id} (held out, fold {a.obs['fold'].iloc[0]}) - {cv.encoder} / {cv.head}",
                     save=save, show=show)
