"""10x Visium HD (Space Ranger 3 and 4 ``outs/``): one bin size of ``binned_outputs/square_{NNN}um/``, or the
segmented cells of ``segmented_outputs/`` (Space Ranger 4).

Layout read (per bin size)::

    outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5      (or filtered_feature_bc_matrix/ mtx)
    outs/binned_outputs/square_008um/spatial/tissue_positions.parquet   (pxl_row_in_fullres, pxl_col_in_fullres)
    outs/binned_outputs/square_008um/spatial/scalefactors_json.json     (microns_per_pixel, bin_size_um, ...)
    outs/spatial/tissue_hires_image.png                                 (used only without image=)

and for cells (``bin_size_um="cells"``, or ``path`` = ``outs/segmented_outputs/``)::

    outs/segmented_outputs/filtered_feature_cell_matrix.h5              (or filtered_feature_cell_matrix/ mtx;
                                                                          barcodes cellid_000000001-1, ...)
    outs/segmented_outputs/cell_segmentations.geojson                   (FeatureCollection of Polygons in
                                                                          full-resolution px, properties.cell_id 1)
    outs/segmented_outputs/spatial/scalefactors_json.json               (else a bin's, else outs/spatial/'s)

Bin centres and cell polygons are in the pixel frame of the full-resolution H&E given to Space Ranger
(``--image``); give the same file with ``image=``. A cell's point is the area centroid of its polygon, its
barcode the matrix's cell id. The micrometres per pixel comes from ``microns_per_pixel`` (Space Ranger
3+), else from ``bin_size_um / spot_diameter_fullres`` (a bin's side in full-resolution pixels); if neither
is there, the user must give it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io import spaceranger as S
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "visium-hd"
DEFAULT_BIN_UM = 8
CELLS = "cells"  # bin_size_um="cells": the segmented cells instead of a bin size
SEGMENTED = "segmented_outputs"
CELL_H5 = "filtered_feature_cell_matrix.h5"
CELL_MTX = "filtered_feature_cell_matrix"
CELL_GEOJSON = "cell_segmentations.geojson"
_BIN_RE = re.compile(r"^square_(\d{3})um$")
_CELL_ID_RE = re.compile(r"^cellid_(\d+)(?:-\d+)?$")
_MAX_PX = 1e7  # no slide is 10 million px wide


def bin_folder_name(bin_size_um: int | float) -> str:
    b = float(bin_size_um)
    if not (b > 0 and b == int(b)):
        raise ValueError(f"bin_size_um must be a whole number of micrometres (2, 8, 16), got {bin_size_um}")
    return f"square_{int(b):03d}um"


def available_bins(binned: Path) -> list[int]:
    """Bin sizes (um) present under ``binned_outputs/``."""
    if not binned.is_dir():
        return []
    return sorted(int(m.group(1)) for d in binned.iterdir() if d.is_dir() and (m := _BIN_RE.match(d.name)))


def _is_segmented(d: Path) -> bool:
    return d.name == SEGMENTED and any((d / n).exists() for n in (CELL_GEOJSON, CELL_H5, CELL_MTX))


def hd_layout(path: Path) -> tuple[Path, Path | None] | None:
    """``(outs, bin_dir or None)`` when ``path`` is a Visium HD ``outs/`` (or its parent) or one of
    its ``square_NNNum/`` folders or its ``segmented_outputs/`` (then ``bin_dir`` is that folder); None otherwise."""
    path = Path(path)
    if _BIN_RE.match(path.name) and path.parent.name == "binned_outputs" and (path / "spatial").is_dir():
        return path.parent.parent, path
    if _is_segmented(path):
        return path.parent, path
    for d in (path, path / "outs"):
        if ((d / "binned_outputs").is_dir() and available_bins(d / "binned_outputs")) or _is_segmented(d / SEGMENTED):
            return d, None
    return None


def _choices(outs: Path) -> str:
    have = [f"{h} um" for h in available_bins(outs / "binned_outputs")]
    bins = f"bins of {', '.join(have)}" if have else "bins of no size"
    return f"{bins} and cells ({SEGMENTED}/)" if (outs / SEGMENTED).is_dir() else bins


def _wants_cells(bin_size_um: Any) -> bool:
    return isinstance(bin_size_um, str) and bin_size_um.strip().lower() == CELLS


def _bin_um(bin_size_um: Any, path: Path) -> float | None:
    """A numeric bin size from ``bin_size_um`` (a number or a numeric string), None when not given."""
    if bin_size_um is None or not isinstance(bin_size_um, str):
        return bin_size_um
    try:
        return float(bin_size_um)
    except ValueError:
        raise InputError(path, f"bin_size_um {bin_size_um!r} is neither a bin size in micrometres nor {CELLS!r}.",
                         f"give 2, 8 or 16 (a bin size), or {CELLS!r} for the segmented cells.") from None


def _bin_dir(outs: Path, given: Path | None, bin_size_um: float | None) -> Path:
    binned = outs / "binned_outputs"
    if given is not None and bin_size_um is None:
        return given
    b = DEFAULT_BIN_UM if bin_size_um is None else bin_size_um
    d = binned / bin_folder_name(b)
    if not d.is_dir():
        raise InputError(
            d, f"there is no {d.name}/ folder: this run holds {_choices(outs)}.",
            f"pick one of those (read_sample(..., bin_size_um=N or bin_size_um={CELLS!r}), or a bin_size_um column "
            f"in a manifest), or copy binned_outputs/{d.name}/ from Space Ranger.",
        )
    for need in ("spatial",):
        if not (d / need).is_dir():
            raise InputError(d / need, f"{d.name}/ has no {need}/ folder.",
                             f"copy binned_outputs/{d.name}/ from Space Ranger outs/ completely.")
    return d


def _read_counts(folder: Path, h5: str, mtx: str, what: str, notes: C.Notes):
    """Gene Expression counts (checked), barcodes, ids, names and the file read, from ``h5`` or the ``mtx`` folder."""
    if (folder / h5).is_file():
        counts_path = folder / h5
        X, bc, ids, names, ftype = S._read_h5(counts_path)
    elif (folder / mtx).is_dir():
        counts_path = folder / mtx
        X, bc, ids, names, ftype = S._read_mtx(counts_path)
    else:
        raise InputError(folder / h5, f"{folder.name}/ has no {h5} (or {mtx}/ folder).",
                         f"copy {what} from Space Ranger outs/ completely.")
    C.check_unique(bc, counts_path)
    ge = ftype == "Gene Expression"
    if not ge.all():
        notes.note(f"kept {int(ge.sum())} Gene Expression features of {len(ge)}")
        X, ids, names = X[:, np.flatnonzero(ge)], ids[ge], names[ge]
    return C.check_counts(X, counts_path), bc, ids, names, counts_path


def _default_image(folders: list[tuple[Path, dict]]) -> tuple[Path | None, float]:
    """The hires (else lowres) PNG of the first folder that has one with its scale factor, and that factor."""
    for folder, sf in folders:
        for key, name in (("tissue_hires_scalef", "tissue_hires_image.png"),
                          ("tissue_lowres_scalef", "tissue_lowres_image.png")):
            if (folder / name).is_file() and key in sf:
                return folder / name, float(sf[key])
    return None, 1.0


def _open_image(image: Path | None, folders: list[tuple[Path, dict]], coords: np.ndarray, outs: Path,
                notes: C.Notes):
    """(slide or None, mask of the points inside it): ``image=`` at full resolution, else a PNG of ``outs``."""
    from stfeat.slide import open_slide

    img_path, scale = (Path(image), 1.0) if image is not None else _default_image(folders)
    if img_path is None:
        notes.warn(f"{outs}: no image found (no --image and no tissue_hires/lowres PNG); expression only.")
        return None, np.ones(len(coords), dtype=bool)
    slide = open_slide(img_path, scale=scale)
    if scale != 1.0:
        notes.warn(f"{img_path.name}: no full-resolution H&E given; using this image at {scale:g} image px per "
                   "full-res px (reduced detail). Pass image=FULLRES (--image) for full resolution.")
    return slide, C.drop_outside_image(coords, slide, img_path, notes)


def _sf_um(sfs: list[tuple[dict, Path]]) -> tuple[float, str] | None:
    """um/px: the first ``microns_per_pixel`` of ``sfs``, else the first ``bin_size_um / spot_diameter_fullres``."""
    for sf, _ in sfs:
        if sf.get("microns_per_pixel"):
            return float(sf["microns_per_pixel"]), "visium-hd scalefactors (microns_per_pixel)"
    for sf, _ in sfs:
        if sf.get("spot_diameter_fullres") and sf.get("bin_size_um"):
            return (float(sf["bin_size_um"]) / float(sf["spot_diameter_fullres"]),
                    "visium-hd scalefactors (bin_size_um / spot_diameter_fullres)")
    return None


def read_visium_hd(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, bin_size_um: float | str | None = None,
) -> Sample:
    """Read one bin size of a Visium HD run (bins as spots), or its segmented cells, into a :class:`Sample`.

    Parameters
    ----------
    path
        ``outs/``, the folder holding it, ``outs/binned_outputs/square_NNNum/`` or ``outs/segmented_outputs/``.
    image
        The full-resolution H&E given to Space Ranger; without it the hires PNG is used (reduced detail).
    bin_size_um
        2, 8 or 16 (default 8, or the folder given as ``path``), or ``"cells"``: one point per segmented
        cell of ``segmented_outputs/`` (Space Ranger 4), at its polygon's centroid.
    """
    lay = hd_layout(Path(path))
    if lay is None:
        raise InputError(path, "this is not a Visium HD outs/ folder (needs binned_outputs/square_NNNum/ or "
                         f"{SEGMENTED}/).", "point to the outs/ folder of a Space Ranger run on Visium HD data.")
    outs, given = lay
    kw = dict(image=image, um_per_px=um_per_px, sample_id=sample_id, patient=patient)
    if _wants_cells(bin_size_um) or (bin_size_um is None and given is not None and given.name == SEGMENTED):
        return _read_cells(outs, **kw)  # type: ignore[arg-type]
    given = None if given is not None and given.name == SEGMENTED else given
    return _read_bins(outs, _bin_dir(outs, given, _bin_um(bin_size_um, Path(path))), **kw)  # type: ignore[arg-type]


def _read_bins(outs: Path, bdir: Path, *, image: Path | None, um_per_px: float | None, sample_id: str | None,
               patient: str | None) -> Sample:
    import pandas as pd

    notes = C.Notes()
    X, bc, ids, names, counts_path = _read_counts(bdir, S._H5, S._MTX, f"binned_outputs/{bdir.name}/", notes)
    spatial = bdir / "spatial"
    pbc, in_tissue, xy, pos_path, _array_cr = S.read_positions(spatial)
    tissue = in_tissue == 1
    ci, pi = C.join_positions(bc, pbc[tissue], counts_path, pos_path, notes)
    X, bc, coords = X[ci], bc[ci], xy[tissue][pi]
    sf, sf_path = S.read_scalefactors(spatial)
    if not sf:
        sf, sf_path = S.read_scalefactors(outs / "spatial")
    bin_um = float(sf.get("bin_size_um") or int(_BIN_RE.match(bdir.name).group(1)))  # type: ignore[union-attr]

    slide, inside = _open_image(image, [(spatial, sf), (outs / "spatial", sf)], coords, outs, notes)
    X, bc, coords = X[inside], bc[inside], coords[inside]

    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    elif (got := _sf_um([(sf, sf_path)])) is not None:  # type: ignore[list-item]
        um, src = got
    else:
        raise C.no_um_error(sf_path or spatial / "scalefactors_json.json",
                            "scalefactors_json.json has neither microns_per_pixel nor bin_size_um with "
                            "spot_diameter_fullres")
    n_off = int((~tissue).sum())
    if n_off:
        notes.note(f"{n_off} bins are off tissue (in_tissue 0) and were not kept")
    sid = sample_id or (outs.parent.name if outs.name == "outs" else outs.name)
    return C.build_sample(
        X=X, barcodes=bc, genes=names, coords=coords, slide=slide, sample_id=sid, patient=patient, fmt=FORMAT,
        um_per_px=um, um_source=src, source_path=bdir, notes=notes,
        var=pd.DataFrame({"gene_ids": ids.astype(str)}),
        extra={"bin_size_um": bin_um, "spot_diameter_um": bin_um},
    )


# --- segmented cells (Space Ranger 4 segmented_outputs/) ---------------------------------------------------------


def _cell_key(v: Any) -> Any:
    """The join key of a cell id: the integer of ``cellid_000000001-1`` (matrix) or of ``cell_id: 1`` (GeoJSON)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    s = str(v).strip()
    if s.isdigit():
        return int(s)
    m = _CELL_ID_RE.match(s)
    return int(m.group(1)) if m else s


def _polygons(geom: Any) -> list[list[np.ndarray]] | None:
    """A GeoJSON Polygon / MultiPolygon as polygons of rings ((n, 2) arrays, exterior first); None for other types."""
    if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    coords = geom.get("coordinates")
    polys = [coords] if geom["type"] == "Polygon" else coords
    out = []
    for p in polys or []:
        rings = [np.asarray(r, dtype=np.float64) for r in p]
        if any(r.ndim != 2 or r.shape[1] < 2 for r in rings):
            raise ValueError("a ring is not a list of [x, y] points")
        rings = [r[:-1, :2] if len(r) > 1 and (r[0] == r[-1]).all() else r[:, :2] for r in rings]  # open rings
        if not rings or any(len(r) < 3 for r in rings):
            raise ValueError("a ring has fewer than 3 distinct corners")
        out.append(rings)
    return out or None


def read_cell_polygons(path: Path) -> tuple[list[Any], list[list[list[np.ndarray]]]]:
    """Cell ids and polygons (full-resolution px) of a Space Ranger ``cell_segmentations.geojson``."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"the cell segmentation is not valid JSON ({exc}).",
                         f"re-copy {path.name} from Space Ranger outs/{SEGMENTED}/.") from None
    feats = data.get("features") if isinstance(data, dict) else None
    if not isinstance(feats, list):
        raise InputError(path, "the cell segmentation is not a GeoJSON FeatureCollection (no 'features' list).",
                         f"give Space Ranger's {CELL_GEOJSON} from outs/{SEGMENTED}/.")
    ids: list[Any] = []
    polys: list[list[list[np.ndarray]]] = []
    for i, f in enumerate(feats):
        props = f.get("properties") if isinstance(f, dict) else None
        cid = props.get("cell_id") if isinstance(props, dict) else None
        try:
            p = _polygons(f.get("geometry")) if isinstance(f, dict) else None
        except (ValueError, TypeError) as exc:
            raise InputError(path, f"feature {i} (cell_id {cid!r}) has malformed polygon coordinates ({exc}).",
                             f"re-copy {path.name} from Space Ranger outs/{SEGMENTED}/.") from None
        if cid is None or p is None:
            continue
        flat = np.concatenate([r for poly in p for r in poly])
        if not np.isfinite(flat).all() or (np.abs(flat) > _MAX_PX).any():
            raise InputError(path, f"the polygon of cell_id {cid!r} has coordinates that are not finite or beyond "
                             "10 million px.", "give polygons in full-resolution image pixels.")
        ids.append(cid)
        polys.append(p)
    if not polys:
        raise InputError(path, f"the cell segmentation has no cell polygons ({len(feats)} features, none a Polygon "
                         "with a cell_id property).", f"give Space Ranger's {CELL_GEOJSON} (cell polygons in "
                         f"full-resolution pixels with properties.cell_id) from outs/{SEGMENTED}/.")
    return ids, polys


def _ring_area_centroid(r: np.ndarray) -> tuple[float, np.ndarray]:
    o = r[0]
    x, y = (r - o).T
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    a = cross.sum() / 2.0
    if a == 0:
        return 0.0, o
    return abs(a), o + np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6.0 * a)


def _centroid_numpy(poly: list[list[np.ndarray]]) -> tuple[np.ndarray, float]:
    """Area centroid and area of a (multi)polygon with holes: rings' signed-area moments (shoelace)."""
    area, moment = 0.0, np.zeros(2)
    for rings in poly:
        for k, r in enumerate(rings):
            a, c = _ring_area_centroid(r)
            sign = 1.0 if k == 0 else -1.0  # holes take their area out
            area += sign * a
            moment += sign * a * c
    if area > 0:
        return moment / area, area
    return np.unique(np.concatenate([p[0] for p in poly]), axis=0).mean(axis=0), 0.0


def cell_centroids(polys: list[list[list[np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) area centroids (x, y) and (n,) areas, in the polygons' pixels: shapely when installed, else numpy."""
    try:
        import shapely
    except ImportError:
        shapely = None  # type: ignore[assignment]
    if shapely is None:
        out = [_centroid_numpy(p) for p in polys]
        return np.array([c for c, _ in out], dtype=np.float64).reshape(-1, 2), np.array([a for _, a in out])
    geoms = np.array([shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in poly]) if len(poly) > 1
                      else shapely.Polygon(poly[0][0], poly[0][1:]) for poly in polys], dtype=object)
    area = shapely.area(geoms)
    xy = np.full((len(geoms), 2), np.nan)
    ok = area > 0
    if ok.any():
        xy[ok] = shapely.get_coordinates(shapely.centroid(geoms[ok]))
    for i in np.flatnonzero(~ok):  # degenerate (zero-area) polygon: the mean of its vertices
        xy[i] = _centroid_numpy(polys[i])[0]
    return xy, np.asarray(area, dtype=np.float64)


def _read_cells(outs: Path, *, image: Path | None, um_per_px: float | None, sample_id: str | None,
                patient: str | None) -> Sample:
    import pandas as pd

    seg = outs / SEGMENTED
    if not seg.is_dir():
        raise InputError(seg, f"there is no {SEGMENTED}/ folder: this run has no cell segmentation (Space Ranger 4 "
                         f"writes it when it segments the H&E); it holds {_choices(outs)}.",
                         f"pick a bin size (bin_size_um=N), or copy outs/{SEGMENTED}/ from a Space Ranger 4 run "
                         "with cell segmentation.")
    notes = C.Notes()
    X, bc, ids, names, counts_path = _read_counts(seg, CELL_H5, CELL_MTX, f"{SEGMENTED}/", notes)
    gj = seg / CELL_GEOJSON
    if not gj.is_file():
        raise InputError(gj, f"{SEGMENTED}/ has no {CELL_GEOJSON} (the cell polygons).",
                         f"copy outs/{SEGMENTED}/ from Space Ranger completely.")
    cids, polys = read_cell_polygons(gj)
    keys = pd.Index([_cell_key(c) for c in cids])
    if not keys.is_unique:
        dup = keys[keys.duplicated()].unique()[:3].tolist()
        raise InputError(gj, f"some cell ids have more than one polygon (e.g. {dup}).",
                         f"re-copy {CELL_GEOJSON} from Space Ranger outs/{SEGMENTED}/ (one Feature per cell).")
    where = keys.get_indexer([_cell_key(b) for b in bc])
    ci = np.flatnonzero(where >= 0)
    if ci.size == 0:
        raise InputError(counts_path, f"the cells of the matrix and the polygons of {gj.name} share no cell id "
                         f"(matrix e.g. {list(bc[:3])}, polygons e.g. {list(cids[:3])}).",
                         f"use the matrix and {CELL_GEOJSON} of one run (outs/{SEGMENTED}/ copied whole).")
    if len(bc) - ci.size:
        notes.warn(f"{counts_path.name}: {len(bc) - ci.size} of {len(bc)} cells have counts but no polygon in "
                   f"{gj.name}; dropped them.")
    if len(cids) - ci.size:
        notes.warn(f"{gj.name}: {len(cids) - ci.size} of {len(cids)} cell polygons have no counts in "
                   f"{counts_path.name}; left them out.")
    coords, area_px = cell_centroids([polys[j] for j in where[ci]])
    X, bc = X[ci], bc[ci]

    sfs = [S.read_scalefactors(d) for d in [seg / "spatial"] + [
        outs / "binned_outputs" / bin_folder_name(b) / "spatial"
        for b in sorted(available_bins(outs / "binned_outputs"), key=lambda b: (b != DEFAULT_BIN_UM, b))
    ] + [outs / "spatial"]]
    found = [(sf, p) for sf, p in sfs if p is not None]
    first = next((sf for sf, _ in found if "tissue_hires_scalef" in sf or "tissue_lowres_scalef" in sf), {})
    folders = [(seg / "spatial", {**first, **sfs[0][0]}), (outs / "spatial", {**first, **sfs[-1][0]})]
    slide, inside = _open_image(image, folders, coords, outs, notes)
    X, bc, coords, area_px = X[inside], bc[inside], coords[inside], area_px[inside]

    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    elif (got := _sf_um(found)) is not None:
        um, src = got
    else:
        raise C.no_um_error(found[0][1] if found else seg / "spatial" / "scalefactors_json.json",
                            f"no scalefactors_json.json of {SEGMENTED}/spatial/, binned_outputs/*/spatial/ or "
                            "spatial/ states microns_per_pixel or bin_size_um with spot_diameter_fullres")
    obs = pd.DataFrame({"cell_area": area_px * um * um}, index=pd.Index(bc.astype(str)))  # um^2, as Xenium's
    diam = float(np.median(2.0 * np.sqrt(area_px[area_px > 0] / np.pi))) * um if (area_px > 0).any() else 0.0
    notes.note(f"{len(bc)} segmented cells from {gj.name} (points at polygon centroids)")
    sid = sample_id or (outs.parent.name if outs.name == "outs" else outs.name)
    return C.build_sample(
        X=X, barcodes=bc, genes=names, coords=coords, slide=slide, sample_id=sid, patient=patient, fmt=FORMAT,
        um_per_px=um, um_source=src, source_path=seg, notes=notes,
        var=pd.DataFrame({"gene_ids": ids.astype(str)}), obs=obs,
        extra={"cell_segmentation": str(gj), **({"spot_diameter_um": diam} if diam > 0 else {})},
    )
