"""Plots (``st.pl``): every function returns a matplotlib Figure; ``save=PATH`` writes a PNG, ``show=True``
displays it (in a notebook).

* :func:`pcc`: per-gene Pearson r of a :class:`~stfeat.crossval.CVResult` (or several), per held-out fold.
* :func:`maps`: measured vs predicted genes of one held-out sample of a CVResult, over the H&E.
* :func:`r_distribution`, :func:`gene_maps`, :func:`expression_map`: the same from plain arrays.
* :func:`rasterize`, :func:`raster_map`: dense points (Visium HD bins, Xenium cells, prediction grids)
  painted as an image on their lattice over the H&E, instead of one scatter marker per point.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no backend switch), so they work
headless and in notebooks alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
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


def _finish(fig, save: str | Path | None, show: bool, dpi: int = 110):
    """Write ``fig`` to ``save`` atomically (PNG) and/or display it; return it."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        from stfeat._safe_write import tmp_path

        tmp = tmp_path(path)  # created by us: a planted link at a guessable name is never followed
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
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


# ------------------------------------------------------------------------------ dense points as an image
RASTER_MAX_SIDE = 2000  # raster cells per side at most; a finer lattice is averaged down by a whole factor


@dataclass
class Raster:
    """Values of points painted on a regular grid (from :func:`rasterize`).

    Attributes
    ----------
    grid
        (h, w, g) float32: per raster cell and gene, the mean of the points in the cell; NaN where no point.
    count
        (h, w) number of points in each cell.
    left, top
        Level-0 px of the grid's outer edges (cell ``[0, 0]`` spans ``left .. left + cell_px``).
    cell_px
        A raster cell's side in level-0 px (``step_px * factor``).
    factor
        How many lattice steps one raster cell spans per side (1 unless the lattice was too fine for
        ``max_side``).
    """

    grid: np.ndarray
    count: np.ndarray
    left: float
    top: float
    cell_px: float
    factor: int

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in level-0 px, for ``imshow(..., extent=)`` (y grows downwards)."""
        h, w = self.count.shape
        return (self.left, self.left + w * self.cell_px, self.top + h * self.cell_px, self.top)

    def rgba(self, j: int = 0, *, cmap: str = "viridis", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
        """(h, w, 4) uint8 image of gene column ``j``: coloured by ``cmap``, alpha 0 where no point."""
        import matplotlib

        v = self.grid[..., j]
        lo, hi = _value_range(v, vmin, vmax)
        norm = matplotlib.colors.Normalize(lo, hi)
        out = matplotlib.colormaps[cmap](norm(np.ma.masked_invalid(v)), bytes=True)
        out[~np.isfinite(v)] = 0  # transparent: the H&E shows through where nothing was measured
        return out


def _value_range(v: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    fin = v[np.isfinite(v)]
    lo = float(vmin) if vmin is not None else (float(fin.min()) if fin.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(fin.max()) if fin.size else 1.0)
    return lo, (hi if hi > lo else lo + 1e-9)


def rasterize(values: np.ndarray, coords_px: np.ndarray, step_px: float, *,
              max_side: int = RASTER_MAX_SIDE, fill: int = 0) -> Raster:
    """Paint point values on a square grid of side ``step_px`` (level-0 px): the mean of the points per cell.

    The grid is anchored on the points' smallest x and y, each cell centred on a lattice node
    ``(xmin + i * step_px, ymin + j * step_px)``. For points on that lattice (Visium HD bins with
    ``step_px`` = the bin side, prediction grids with their step) every point gets its own cell and the
    image is exact. For irregular points (cells) ``step_px`` is the pixel size chosen for the map, and a
    pixel shows the mean of the cells whose centre falls in it (no interpolation: a pixel without a
    cell stays empty, unless ``fill``). Cells without a point are NaN. When the grid would exceed ``max_side`` cells on
    a side, it is coarsened by the smallest whole factor that fits (each raster cell = the mean of
    ``factor x factor`` lattice cells), so memory stays bounded whatever the number of points.

    One vectorised pass (``np.bincount``), no loop over points: a million points take well under a second.

    Parameters
    ----------
    values
        (n,) or (n, g) values; NaN values are left out of the means.
    coords_px
        (n, 2) point centres (x, y) in level-0 px.
    step_px
        Lattice step (bin side, grid step) or chosen pixel size, in level-0 px.
    fill
        For irregular points: an empty cell within ``fill`` cells of a point takes the mean of the points
        in its ``(2 fill + 1)``-cell square (a normalised box filter), so gaps between cell centres do not
        speckle the map; cells holding a point keep their own mean. 0 (the default, for lattices): none.

    Raises
    ------
    InputError
        Shapes that do not match, no points, non-finite coordinates or a step that is not a positive number.
    """
    from stfeat.errors import InputError

    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    xy = np.asarray(coords_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or v.ndim != 2 or len(v) != len(xy):
        raise InputError(None, f"a map needs (n, 2) coordinates and n values per gene; got coordinates of shape "
                         f"{xy.shape} and values of shape {np.shape(values)}.",
                         "pass obsm['spatial'] and the matching rows of X.")
    if len(xy) == 0:
        raise InputError(None, "there are no points to map.", "give at least one point.")
    if not np.isfinite(xy).all():
        raise InputError(None, f"{int((~np.isfinite(xy)).any(axis=1).sum())} point(s) have a non-finite position.",
                         "drop those rows before mapping.")
    try:
        step = float(step_px)
    except (TypeError, ValueError):
        step = float("nan")
    if not (np.isfinite(step) and step > 0):
        raise InputError(None, f"the raster step must be a positive number of pixels, got {step_px!r}.",
                         "pass the bin size or grid step in level-0 px (micrometres / um_per_px).")
    if int(fill) < 0:
        raise InputError(None, f"fill must be 0 or more cells, got {fill!r}.", "pass 0 (lattices) or 1 (cells).")
    if int(max_side) < 1:
        raise InputError(None, f"max_side must be at least 1, got {max_side!r}.", "pass a few thousand at most.")
    lo = xy.min(axis=0)
    ij = np.floor((xy - lo) / step + 0.5).astype(np.int64)  # lattice node of each point (x, y)
    n_x, n_y = int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1
    factor = max(1, int(np.ceil(max(n_x, n_y) / int(max_side))))
    if factor > 1:
        ij //= factor
        n_x, n_y = -(-n_x // factor), -(-n_y // factor)
    flat = ij[:, 1] * n_x + ij[:, 0]
    size = n_x * n_y
    count = np.bincount(flat, minlength=size)
    grid = np.full((n_y, n_x, v.shape[1]), np.nan, dtype=np.float32)
    for j in range(v.shape[1]):  # genes, not points
        col = v[:, j]
        ok = np.isfinite(col)
        if ok.all():
            s, c = np.bincount(flat, weights=col, minlength=size), count
        else:
            s = np.bincount(flat[ok], weights=col[ok], minlength=size)
            c = np.bincount(flat[ok], minlength=size)
        s, c = s.reshape(n_y, n_x), c.reshape(n_y, n_x).astype(np.float64)
        mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        if fill and (c == 0).any():
            from scipy.ndimage import uniform_filter

            k = 2 * int(fill) + 1  # both sums are divided by the same window size: their ratio is the mean
            s_k, c_k = uniform_filter(s, k, mode="constant"), uniform_filter(c, k, mode="constant")
            near = (c == 0) & (c_k > 0.5 / k**2)  # a point in the window gives >= 1 / k**2
            mean[near] = s_k[near] / c_k[near]
        grid[..., j] = mean
    return Raster(grid=grid, count=count.reshape(n_y, n_x), left=float(lo[0] - step / 2),
                  top=float(lo[1] - step / 2), cell_px=step * factor, factor=factor)


def raster_map(values: np.ndarray, coords_px: np.ndarray, step_px: float, thumb=None, *,
               genes: Sequence[str] | None = None, title: str = "", um_per_px: float | None = None,
               cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
               max_side: int = RASTER_MAX_SIDE, fill: int = 0, ncols: int = 3, panel_in: float = 5.0, dpi: int = 150,
               save: str | Path | None = None, show: bool = False):
    """Dense point values drawn as an image (one panel per gene) over the H&E thumbnail, with colour bars.

    The points are painted with :func:`rasterize` (their lattice, or a grid of ``step_px`` for cells) and
    shown with ``imshow`` at their place on the slide; cells without a point are transparent, so the H&E
    shows through. A panel's title says when the lattice was too fine and was averaged down.

    Parameters
    ----------
    values
        (n,) or (n, g) values (e.g. predicted expression of ``genes``).
    coords_px
        (n, 2) point centres in level-0 px.
    step_px
        Bin side / grid step (or, for cells, the map's pixel size) in level-0 px.
    thumb
        ``(rgb, thumbnail px per level-0 px)`` from :func:`sample_thumbnail`, or None.
    genes
        Panel names (default ``value``, ``value 1``, ...).
    um_per_px
        Level-0 micrometres per px: titles give the raster cell in micrometres.
    max_side, fill
        As in :func:`rasterize` (``fill=1`` for cells).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    r = rasterize(values, coords_px, step_px, max_side=max_side, fill=fill)
    g = r.grid.shape[2]
    names = list(genes) if genes is not None else (["value"] if g == 1 else [f"value {j}" for j in range(g)])
    if len(names) != g:
        from stfeat.errors import InputError

        raise InputError(None, f"{len(names)} gene names for {g} value columns.", "give one name per column.")
    ncol = max(1, min(int(ncols), g))
    nrow = int(np.ceil(g / ncol))
    h, w = r.count.shape
    aspect = (h / w) if w else 1.0
    fig, axes = _figure((panel_in * ncol, max(2.0, panel_in * min(aspect, 2.0)) * nrow + 0.3), nrow, ncol)
    cell = f"{r.cell_px * um_per_px:.3g} um" if um_per_px else f"{r.cell_px:.3g} px"
    note = (f"; averaged down {r.factor}x to {w}x{h} pixels of {cell}" if r.factor > 1 else f"; {cell} pixels")
    note += f", gaps up to {int(fill)} px filled" if fill else ""
    left, right, bottom, top = r.extent
    pad = 0.03 * max(right - left, bottom - top)
    for j, name in enumerate(names):
        ax = axes[j // ncol, j % ncol]
        if thumb is not None:
            rgb, scale = thumb
            th, tw = np.asarray(rgb).shape[:2]
            ax.imshow(rgb, extent=(0, tw / float(scale), th / float(scale), 0), interpolation="antialiased")
        lo, hi = _value_range(r.grid[..., j], vmin, vmax)
        # one raster cell to at least one screen pixel: nearest keeps bins square; finer rasters are filtered
        shown_px = panel_in * dpi
        interp = "nearest" if max(h, w) <= shown_px else "antialiased"
        ax.imshow(r.rgba(j, cmap=cmap, vmin=lo, vmax=hi), extent=r.extent, interpolation=interp)
        ax.set_xlim(left - pad, right + pad)
        ax.set_ylim(bottom + pad, top - pad)  # image convention: y grows downwards
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}{note}", fontsize=9)
        fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap=cmap), ax=ax, shrink=0.7)
    for j in range(g, nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save, show, dpi=dpi)


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
