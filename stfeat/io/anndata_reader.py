"""AnnData inputs: any ``.h5ad`` with spot positions, and the HEST-1k on-disk layout built on it.

Generic ``.h5ad``: positions from ``obsm["spatial"]`` (x, y) or ``obs`` x_pixel/y_pixel; image and um/px
from the caller, else from a same-stem image/JSON beside the file, ``uns["spatial"]`` scale factors (Visium),
or the spot lattice. HEST-1k: ``st/{id}.h5ad``, ``wsis/{id}.tif``, ``metadata/{id}.json``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from stfeat import _constants as K
from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

# (column, row) obs pairs. x_pixel/y_pixel follow SpaGCN/DeepSpot, where x_pixel is the image ROW
_COORD_PAIRS = (("y_pixel", "x_pixel"), ("pxl_col_in_fullres", "pxl_row_in_fullres"), ("imagecol", "imagerow"))
_TECH_PITCH = {"visium": K.VISIUM_PITCH_UM, "spatial transcriptomics": K.LEGACY_ST_PITCH_UM, "st": K.LEGACY_ST_PITCH_UM}


def read_h5ad(path: Path) -> Any:
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - anndata/h5py raise many types for damaged files
        raise InputError(path, f"the file cannot be read as AnnData ({type(exc).__name__}: {exc}).",
                         "give an .h5ad written by anndata (adata.write_h5ad).") from None


def read_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"the metadata is not valid JSON ({exc}).", "fix or remove the JSON file.") from None
    return out if isinstance(out, dict) else {}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def counts_of(adata: Any, path: Path, notes: C.Notes, allow_normalized: bool) -> Any:
    """Raw counts of an AnnData: X if whole numbers, else layers['counts'] / .raw, else error (or warn)."""
    cands: list[tuple[str, Any]] = [("X", adata.X)]
    for name in ("counts", "raw_counts", "count"):
        if name in adata.layers:
            cands.append((f"layers[{name!r}]", adata.layers[name]))
    if adata.raw is not None and adata.raw.shape == adata.shape:
        cands.append(("raw.X", adata.raw.X))
    first_err: InputError | None = None
    for where, m in cands:
        try:
            X = C.check_counts(m, path)
        except InputError as exc:
            first_err = first_err or exc
            continue
        if where != "X":
            notes.note(f"raw counts taken from adata.{where} (X is not raw counts)")
        return X
    assert first_err is not None
    if allow_normalized and "non-integer" in first_err.problem:
        notes.warn(f"{path.name}: X holds non-integer values (normalised, not raw counts); kept as given because "
                   "allow_normalized=True. Expression targets built from it are not comparable to raw-count samples.")
        import scipy.sparse as sp

        return sp.csr_matrix(adata.X, dtype=np.float32)
    raise first_err


def coords_of(adata: Any, path: Path) -> tuple[np.ndarray, str]:
    if adata.n_obs == 0:
        raise InputError(path, "the AnnData holds no spots (0 observations).", "give a sample with its spots.")
    if K.SPATIAL_KEY in adata.obsm:
        where = f'obsm["{K.SPATIAL_KEY}"]'
        raw = adata.obsm[K.SPATIAL_KEY]
        raw = raw.to_numpy() if hasattr(raw, "to_numpy") else np.asarray(raw)
        try:
            xy = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(path, f"{where} holds values that are not numbers (dtype {raw.dtype}).",
                             f'store spot centres as numbers: adata.obsm["{K.SPATIAL_KEY}"] (n, 2) float, (x, y).') from None
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise InputError(path, f"{where} has shape {xy.shape}; it needs 2 columns (x, y).",
                             f'store spot centres as adata.obsm["{K.SPATIAL_KEY}"] of shape (n, 2), (x, y) in px.')
        xy = xy[:, :2]
    else:
        pair = next((p for p in _COORD_PAIRS if set(p) <= set(adata.obs.columns)), None)
        if pair is None:
            raise InputError(path, f'no spot positions: obsm["{K.SPATIAL_KEY}"] is absent and obs has none of '
                             f"{[list(p) for p in _COORD_PAIRS]}.",
                             f'store spot centres in full-resolution px as adata.obsm["{K.SPATIAL_KEY}"] (x, y).')
        where = f"obs[{list(pair)}] as (x, y)"
        try:
            xy = adata.obs[list(pair)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(path, f"{where} holds values that are not numbers.", "store the positions as numbers.") from None
        if pair[0] == "y_pixel":
            where += " (SpaGCN/DeepSpot convention: x_pixel is the image row)"
    if not np.isfinite(xy).all():
        raise InputError(path, f"{where} holds NaN or infinite positions.", "give every spot a position.")
    return xy, where


def _visium_scalefactors(adata: Any) -> dict[str, Any] | None:
    sp = adata.uns.get("spatial")
    if isinstance(sp, dict):
        for lib in sp.values():
            if isinstance(lib, dict) and isinstance(lib.get("scalefactors"), dict):
                return dict(lib["scalefactors"])
    return None


def resolve_um(
    *, user: float | None, meta: dict[str, Any], meta_path: Path | None, slide: Any, coords: np.ndarray,
    tech: str | None, scalefactors: dict[str, Any] | None, path: Path, notes: C.Notes,
) -> tuple[float, str]:
    """um/px by precedence: user, HEST metadata, Visium scale factors, image file, spot lattice; else error."""
    if user is not None:
        return float(user), "user"
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded"):
        if (v := _num(meta.get(key))) is not None:
            return v, f"hest-metadata ({key} in {meta_path.name if meta_path else 'metadata'})"
    pitch = _TECH_PITCH.get(str(tech or "").strip().lower())
    if scalefactors and (d := _num(scalefactors.get("spot_diameter_fullres"))) is not None:
        if not (np.isfinite(d) and d > 0):
            raise InputError(path, f"uns['spatial'] scale factors give spot_diameter_fullres = {d:g}, not a "
                             "positive number of pixels.", "fix the scale factors, or pass --um-per-px.")
        um = K.VISIUM_SPOT_FULLRES_UM / d
        lat, nn = C.lattice_um_per_px(coords, K.VISIUM_PITCH_UM)
        if np.isfinite(lat) and abs(lat / um - 1) > 0.1:
            notes.warn(
                f"{path.name}: uns['spatial'] scale factors give {um:.3f} um/px (65 um / spot_diameter_fullres) but "
                f"the spot lattice in these coordinates gives {lat:.3f} um/px (100 um pitch / {nn:.1f} px): the "
                "coordinates are not in the full-resolution frame of those scale factors; using the lattice value. "
                "Pass um_per_px (--um-per-px) if you know it."
            )
            return lat, C.estimated_source("Visium", K.VISIUM_PITCH_UM, nn)
        return um, f"uns['spatial'] scalefactors ({K.VISIUM_SPOT_FULLRES_UM:g} um spot span / spot_diameter_fullres)"
    if slide is not None and slide.um_per_px is not None:
        return float(slide.um_per_px), str(slide.um_per_px_source)
    if pitch is not None:
        um, nn = C.lattice_um_per_px(coords, pitch)
        if np.isfinite(um):
            return um, C.estimated_source(str(tech), pitch, nn)
    why = "no pixel size in the image, the metadata or uns['spatial'], and the technology"
    why += f" ({tech}) has no known spot lattice" if tech else " is unknown, so the spot lattice cannot be used"
    raise C.no_um_error(path, why)


def _finish(
    *, adata: Any, path: Path, fmt: str, image: Path | None, scale: float, um_per_px: float | None,
    sample_id: str, patient: str | None, meta: dict[str, Any], meta_path: Path | None, tech: str | None,
    allow_normalized: bool, extra: dict[str, Any],
) -> Sample:
    from stfeat.slide import open_slide

    notes = C.Notes()
    bc = adata.obs_names.astype(str).to_numpy()
    C.check_unique(bc, path)
    X = counts_of(adata, path, notes, allow_normalized)
    coords, where = coords_of(adata, path)
    notes.note(f"spot centres from {where}")
    slide = None
    if image is not None:
        slide = open_slide(image, scale=scale)
        if "y_pixel" in where:  # the x_pixel convention varies between tools: the image decides
            w, h = slide.dimensions
            fits = lambda c: int(((c[:, 0] < w) & (c[:, 1] < h) & (c >= 0).all(1)).sum())  # noqa: E731
            if fits(coords[:, ::-1]) > fits(coords):
                coords = coords[:, ::-1].copy()
                notes.warn(f"{path.name}: obs x_pixel/y_pixel fit the image only as (x, y) = (x_pixel, y_pixel); "
                           "used that order.")
        inside = C.drop_outside_image(coords, slide, image, notes)
        if not inside.all():
            keep = np.flatnonzero(inside)
            X, bc, coords, adata = X[keep], bc[keep], coords[keep], adata[keep]
    else:
        notes.warn(f"{path.name}: no H&E image given or found beside it; expression only. Pass image=PATH (--image).")
    um, src = resolve_um(user=um_per_px, meta=meta, meta_path=meta_path, slide=slide, coords=coords, tech=tech,
                         scalefactors=_visium_scalefactors(adata), path=path, notes=notes)
    var = adata.var.copy()
    obs = adata.obs.copy()
    obs.index = bc
    return C.build_sample(
        X=X, barcodes=bc, genes=adata.var_names, coords=coords, slide=slide, sample_id=sample_id, patient=patient,
        fmt=fmt, um_per_px=um, um_source=src, source_path=path, notes=notes, var=var, obs=obs, extra=extra,
    )


def single_h5ad(folder: Path) -> Path | None:
    hits = sorted(folder.glob("*.h5ad"))
    return hits[0] if len(hits) == 1 else None


def read_anndata(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, allow_normalized: bool = False,
) -> Sample:
    """Read an ``.h5ad`` (or a folder holding exactly one) with its image and um/px."""
    if path.is_dir():
        h5 = single_h5ad(path)
        if h5 is None:
            raise InputError(path, "the folder does not hold exactly one .h5ad file.", "point to the .h5ad file itself.")
        path = h5
    adata = read_h5ad(path)
    meta_path = path.with_suffix(".json") if path.with_suffix(".json").is_file() else None
    meta = read_json(meta_path)
    img = Path(image) if image is not None else C.find_image(path.parent, path.stem)
    sf = _visium_scalefactors(adata)
    tech = meta.get("st_technology") or ("Visium" if sf is not None or "array_row" in adata.obs else None)
    return _finish(
        adata=adata, path=path, fmt="anndata", image=img, scale=1.0, um_per_px=um_per_px,
        sample_id=sample_id or str(meta.get("sample") or meta.get("id") or path.stem),
        patient=patient or _str_or_none(meta.get("patient")), meta=meta, meta_path=meta_path, tech=tech,
        allow_normalized=allow_normalized, extra={"st_technology": str(tech or "")},
    )


def _str_or_none(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() in ("", "nan", "None"):
        return None
    return str(v)


# ---------------------------------------------------------------- HEST-1k layout
def is_hest_root(path: Path) -> bool:
    return path.is_dir() and (path / "st").is_dir() and any((path / "st").glob("*.h5ad"))


def hest_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "st").glob("*.h5ad"))


def hest_meta(root: Path, sid: str) -> tuple[dict[str, Any], Path | None]:
    p = root / "metadata" / f"{sid}.json"
    return (read_json(p), p) if p.is_file() else ({}, None)


def read_hest(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, allow_normalized: bool = False,
) -> Sample:
    """Read one HEST-1k sample from its root (``sample_id`` picks it) or from ``st/{id}.h5ad``."""
    if path.is_file():
        root, sid = path.parent.parent, path.stem
    else:
        root = path
        ids = hest_ids(root)
        if sample_id is not None:
            sid = sample_id
        elif len(ids) == 1:
            sid = ids[0]
        else:
            raise InputError(root, f"the HEST folder holds {len(ids)} samples ({', '.join(ids[:8])}...), so which one "
                             "is meant is unclear.", "pass sample_id=ID, or list them with stfeat.io.resolve_samples(path).")
    h5 = root / "st" / f"{sid}.h5ad"
    C.require_file(h5, f"the HEST expression file of sample {sid}", f"check the sample id; available: {hest_ids(root)}")
    meta, meta_path = hest_meta(root, sid)
    if image is not None:
        img = Path(image)
    else:
        img = C.find_image(root / "wsis", sid)
        if img is None:
            raise InputError(root / "wsis" / f"{sid}.tif", f"the whole-slide image of HEST sample {sid} is missing.",
                             "download wsis/ with the sample, or pass image=PATH (--image).")
    adata = read_h5ad(h5)
    tech = _str_or_none(meta.get("st_technology"))
    extra = {"st_technology": tech or "", "organ": str(meta.get("organ") or "")}
    return _finish(
        adata=adata, path=h5, fmt="hest", image=img, scale=1.0, um_per_px=um_per_px, sample_id=sid,
        patient=patient or _str_or_none(meta.get("patient")), meta=meta, meta_path=meta_path, tech=tech,
        allow_normalized=allow_normalized, extra=extra,
    )
