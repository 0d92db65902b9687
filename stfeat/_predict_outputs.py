"""What :func:`stfeat.prediction.predict` writes: the ``.h5ad``, its PNG maps and, optionally, a SpatialData store.

``OUT.h5ad`` is written atomically. With ``plot``: ``OUT.png`` (an overview, the first :data:`MAP_GENES`
mapped genes, one panel each) and one ``OUT.GENE.png`` per mapped gene for dense points (bins, cells, a
grid: rasters on the points' lattice, :func:`map_step_px`), or for spots when more genes are mapped than the
overview shows. ``map_genes`` chooses the mapped genes: a number K (the K of highest predicted variance,
default :data:`MAP_GENES`), ``"all"``, or gene names. With ``spatialdata``: ``OUT.zarr``
(:func:`stfeat.io.spatialdata_io.write_spatialdata`: circles + table + the H&E), through the optional extra.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

MAP_GENES = 6  # genes mapped by default (those of highest predicted variance), and panels of the overview
SPATIALDATA_FIX = 'install the extra: pip install "stfeat[spatialdata]" (or pass --no-spatialdata).'


# ------------------------------------------------------------------------------------------ which genes
def parse_map_genes(spec: Any, genes: Sequence[str]) -> tuple[str, Any]:
    """``("top", K)`` (the K genes of highest predicted variance; K = all genes for ``"all"``) or
    ``("names", [gene index, ...])`` from ``map_genes``: None (:data:`MAP_GENES`), a number, ``"all"``, gene
    names (a list, or one comma-separated string). Unknown genes raise an :class:`InputError` naming them."""
    genes = [str(g) for g in genes]
    if spec is None:
        return "top", min(MAP_GENES, len(genes))
    if isinstance(spec, str):
        items: list[Any] = [w.strip() for w in spec.split(",") if w.strip()]
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        items = [int(spec)]
    elif isinstance(spec, (list, tuple)):
        items = [w.strip() if isinstance(w, str) else w for w in spec]
        items = [w for w in items if w != ""]
    else:
        raise InputError(None, f"map_genes takes a number, all, or gene names, got {spec!r}.",
                         "give e.g. map_genes=12, map_genes='all' or map_genes=['ERBB2', 'CD24'] "
                         "(CLI: --map-genes 12, --map-genes all, --map-genes ERBB2,CD24).")
    if not items:
        raise InputError(None, "map_genes is empty.", "give a number, all, or gene names.")
    if len(items) == 1:
        one = items[0]
        if isinstance(one, str) and one.lower() == "all":
            return "top", len(genes)
        k = one if isinstance(one, (int, np.integer)) and not isinstance(one, bool) else (
            int(one) if isinstance(one, str) and one.isdigit() and one not in genes else None)
        if k is not None:
            if k < 1:
                raise InputError(None, f"map_genes {k} maps no gene.", "give a number >= 1, or --no-plot for no maps.")
            return "top", min(int(k), len(genes))
    names = [str(w) for w in items]
    where = {g: i for i, g in enumerate(genes)}
    missing = [g for g in names if g not in where]
    if missing:
        raise InputError(None, f"map_genes names {len(missing)} gene(s) the model does not predict: {missing[:8]}.",
                         f"choose among the model's {len(genes)} genes (e.g. {genes[:6]}), or give a number or all.")
    return "names", list(dict.fromkeys(where[g] for g in names))


def map_gene_order(spec: tuple[str, Any], P: np.ndarray) -> list[int]:
    """Indices of the mapped genes, in map order: as named, or by decreasing predicted variance."""
    kind, val = spec
    if kind == "names":
        return list(val)
    return [int(i) for i in np.argsort(-np.var(P, axis=0), kind="stable")[:val]]


# ------------------------------------------------------------------------------------------ map style
def map_step_px(sample: Any, coords_px: np.ndarray, grid_um: float | None) -> tuple[float | None, int, str]:
    """How the prediction map is drawn: ``(raster step in level-0 px, fill, description)`` for dense points,
    ``(None, 0, description)`` for spots (one scatter marker each); ``fill`` as in :func:`stfeat.pl.rasterize`.

    Dense is extraction's rule (:data:`stfeat.dense.AUTO_DENSE_SPACING_UM`): points closer than 50 um
    (Visium HD bins, Xenium cells), and every ``--grid`` prediction. The raster step is the grid step,
    else the bin size the reader recorded (Visium HD), else the points' median nearest-neighbour spacing
    (cells: each map pixel the mean of the cells centred in it; an empty pixel next to cells takes the
    mean of its 3 x 3 neighbourhood, ``fill=1``, so the gaps between cell centres do not speckle the map).
    """
    from stfeat.dense import AUTO_DENSE_SPACING_UM, median_spacing_um

    um = float(sample.um_per_px)
    if grid_um is not None:
        return float(grid_um) / um, 0, f"raster: the {float(grid_um):g} um prediction grid"
    spacing = median_spacing_um(np.asarray(coords_px, dtype=np.float64) * um)
    if not spacing <= AUTO_DENSE_SPACING_UM:
        return None, 0, f"scatter: spots {spacing:.0f} um apart (> {AUTO_DENSE_SPACING_UM:g} um)"
    bin_um = sample.meta.get("bin_size_um")
    if bin_um:
        return float(bin_um) / um, 0, f"raster: {float(bin_um):g} um bins"
    return spacing / um, 1, (f"raster: points {spacing:.1f} um apart (<= {AUTO_DENSE_SPACING_UM:g} um), "
                             f"{spacing:.1f} um map pixels, each the mean of the points centred in it, "
                             "gaps of one pixel filled from their neighbours")


def gene_map_paths(out: Path, genes: list[str]) -> dict[str, Path]:
    """``{gene: OUT_STEM.GENE.png}`` beside ``out``; characters unsafe in file names become ``_``."""
    import re

    paths: dict[str, Path] = {}
    used: set[str] = set()
    for g in genes:
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(g)).strip(".") or "gene"
        name, k = safe, 2
        while name.lower() in used:  # two genes that differ only in unsafe characters (or case)
            name, k = f"{safe}_{k}", k + 1
        used.add(name.lower())
        paths[g] = out.with_name(f"{out.stem}.{name}.png")
    return paths


def _write_maps(s: Any, coords: np.ndarray, P: np.ndarray, genes: list[str], order: list[int], out: Path,
                step_px: float | None, fill: int, files: dict[str, Path], *, title: str) -> None:
    """``OUT.png`` (the first :data:`MAP_GENES` mapped genes, one panel each) and ``OUT.GENE.png`` per ``files``."""
    from stfeat import pl

    over = order[:MAP_GENES]
    names = [genes[i] for i in over]
    thumb = pl.sample_thumbnail(s)
    if step_px is None:  # spots: one marker each
        pl.expression_map(thumb, coords, P[:, over], names, save=out.with_suffix(".png"), title=title)
        for i in order:
            if genes[i] in files:
                pl.expression_map(thumb, coords, P[:, [i]], [genes[i]], save=files[genes[i]], title=title)
    else:
        um = float(s.um_per_px)
        pl.raster_map(P[:, over], coords, step_px, thumb, genes=[f"{g} predicted" for g in names], title=title,
                      um_per_px=um, max_side=1000, fill=fill, panel_in=4.0, dpi=110, save=out.with_suffix(".png"))
        for i in order:
            if genes[i] in files:
                pl.raster_map(P[:, i], coords, step_px, thumb, genes=[f"{genes[i]} predicted"], title=title,
                              um_per_px=um, fill=fill, save=files[genes[i]])
    log.info("maps: %s and %d per-gene maps %s.GENE.png", out.with_suffix(".png"), len(files), out.stem)


# ------------------------------------------------------------------------------------------ spatialdata
def require_spatialdata(out: Any) -> None:
    """Refuse ``spatialdata=True`` early (before any extraction) when it cannot be written."""
    if out is None:
        raise InputError(None, "spatialdata=True writes OUT.zarr beside the .h5ad output, but no out was given.",
                         "pass out=PATH.h5ad (the CLI always has one).")
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        raise InputError(None, "writing the prediction as SpatialData (--spatialdata) needs the spatialdata package, "
                         "which is not installed.", SPATIALDATA_FIX) from None


# ------------------------------------------------------------------------------------------ all outputs
def write_prediction(a: Any, s: Any, out: str | Path, *, grid_um: float | None, plot: bool = True,
                     map_spec: tuple[str, Any] = ("top", MAP_GENES), spatialdata: bool = False,
                     title: str = "") -> None:
    """Write ``a`` to ``out`` (atomically) with its maps and, with ``spatialdata``, ``OUT.zarr``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    P = np.asarray(a.X)
    genes = [str(g) for g in a.var_names]
    coords = np.asarray(a.obsm["spatial"])
    order = map_gene_order(map_spec, P)
    step_px, fill, files = None, 0, {}
    if plot:  # decided before the h5ad is written, so it records which maps go with it
        step_px, fill, style = map_step_px(s, coords, grid_um)
        per_gene = step_px is not None or len(order) > MAP_GENES
        files = gene_map_paths(out, [genes[i] for i in order]) if per_gene else {}
        a.uns["stfeat"]["map"] = style
        a.uns["stfeat"]["map_genes"] = ", ".join(genes[i] for i in order)
        a.uns["stfeat"]["map_files"] = ", ".join([out.with_suffix(".png").name] + [p.name for p in files.values()])
    zarr = out.with_suffix(".zarr") if spatialdata else None
    if zarr is not None:
        a.uns["stfeat"]["spatialdata"] = zarr.name
    from stfeat._faults import named_write_errors
    from stfeat._safe_write import atomic_path

    with named_write_errors(out, what="the prediction", hdf5=True), atomic_path(out) as tmp:
        a.write_h5ad(tmp)  # a fresh temporary name of ours, renamed over OUT: never written through a link
    if zarr is not None:
        from stfeat.io.spatialdata_io import write_spatialdata

        write_spatialdata(a, zarr, sample=s, spot_diameter_um=float(grid_um) if grid_um is not None else None)
        log.info("SpatialData: %s", zarr)
    if plot:
        _write_maps(s, coords, P, genes, order, out, step_px, fill, files, title=title)


__all__ = ["MAP_GENES", "gene_map_paths", "map_gene_order", "map_step_px", "parse_map_genes", "require_spatialdata",
           "write_prediction"]
