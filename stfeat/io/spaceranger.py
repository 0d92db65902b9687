"""10x Visium Space Ranger ``outs/``: counts (h5 or mtx), tissue positions (csv/parquet), scale factors, image.

Positions give spot centres in full-resolution pixels as (pxl_row, pxl_col) = (y, x); stfeat stores (x, y).
The full-resolution H&E is not part of ``outs/``: pass it with ``image=``. Without it the hires (else lowres)
PNG is used through its scale factor, so coordinates stay in full-resolution pixels and only the pixel
detail is reduced (stated in the sample's warnings).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from stfeat import _constants as K
from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "spaceranger"
_H5 = "filtered_feature_bc_matrix.h5"
_MTX = "filtered_feature_bc_matrix"
_POSITIONS = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
_POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def outs_dir(path: Path) -> Path | None:
    """The Space Ranger ``outs`` folder at or under ``path``, or None."""
    for d in (path, path / "outs"):
        if d.is_dir() and (d / "spatial").is_dir() and ((d / _H5).is_file() or (d / _MTX).is_dir()):
            return d
    return None


def _read_h5(path: Path):
    import h5py
    import scipy.sparse as sp

    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise InputError(path, "this HDF5 file has no 'matrix' group: it is not a 10x feature-barcode matrix.",
                                 "give Space Ranger's filtered_feature_bc_matrix.h5.")
            g = f["matrix"]
            shape = tuple(int(v) for v in g["shape"][()])
            m = sp.csc_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=shape)
            barcodes = np.array([b.decode() for b in g["barcodes"][()]])
            feat = g["features"] if "features" in g else g  # v2 (Cell Ranger 2) keeps genes/gene_names at top
            ids = np.array([b.decode() for b in (feat["id"] if "id" in feat else feat["genes"])[()]])
            names = np.array([b.decode() for b in (feat["name"] if "name" in feat else feat["gene_names"])[()]])
            ftype = (np.array([b.decode() for b in feat["feature_type"][()]]) if "feature_type" in feat
                     else np.full(len(ids), "Gene Expression"))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:  # h5py, damaged file
        raise InputError(path, f"the counts file cannot be read as HDF5 ({type(exc).__name__}: {exc}).",
                         "re-copy filtered_feature_bc_matrix.h5 from the Space Ranger outs/ folder.") from None
    return m.T.tocsr(), barcodes, ids, names, ftype


def _read_mtx(folder: Path):
    import pandas as pd
    import scipy.io

    def _f(stem: str) -> Path:
        for s in (f"{stem}.gz", stem):
            if (folder / s).is_file():
                return folder / s
        raise InputError(folder / f"{stem}.gz", f"{stem}(.gz) is missing from the matrix folder.",
                         "copy the whole filtered_feature_bc_matrix/ folder from Space Ranger outs/.")

    mtx = _f("matrix.mtx")
    try:
        with (gzip.open(mtx, "rb") if mtx.suffix == ".gz" else open(mtx, "rb")) as fh:
            m = scipy.io.mmread(fh)
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputError(mtx, f"the Matrix Market file cannot be parsed ({exc}).", "re-copy it from Space Ranger outs/.") from None
    bc = pd.read_csv(_f("barcodes.tsv"), sep="\t", header=None, engine="c")[0].astype(str).to_numpy()
    ff = _f("features.tsv") if any((folder / s).is_file() for s in ("features.tsv.gz", "features.tsv")) else _f("genes.tsv")
    feats = pd.read_csv(ff, sep="\t", header=None, engine="c")
    ids = feats[0].astype(str).to_numpy()
    names = (feats[1] if feats.shape[1] > 1 else feats[0]).astype(str).to_numpy()
    ftype = feats[2].astype(str).to_numpy() if feats.shape[1] > 2 else np.full(len(ids), "Gene Expression")
    if m.shape != (len(ids), len(bc)):
        raise InputError(mtx, f"the matrix is {m.shape[0]} x {m.shape[1]} but there are {len(ids)} features and "
                         f"{len(bc)} barcodes.", "use matrix.mtx, features.tsv and barcodes.tsv from one run.")
    return m.T.tocsr(), bc, ids, names, ftype


def read_positions(spatial: Path):
    """(barcodes, in_tissue, xy full-res px, path, (array_col, array_row)) from whichever positions file exists."""
    import pandas as pd

    path = next((spatial / n for n in _POSITIONS if (spatial / n).is_file()), None)
    if path is None:
        raise InputError(spatial / "tissue_positions.csv", "no tissue positions file found (looked for "
                         f"{', '.join(_POSITIONS)}).", "copy the spatial/ folder of Space Ranger outs/ completely.")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.name == "tissue_positions_list.csv":
            df = pd.read_csv(path, header=None, engine="c")
            if str(df.iloc[0, 0]) == "barcode":  # some tools write a header anyway
                df = pd.read_csv(path, engine="c")
            else:
                df.columns = _POS_COLS[: df.shape[1]]
        else:
            df = pd.read_csv(path, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError, zlib.error) as exc:
        raise InputError(path, f"the positions file cannot be parsed ({exc}).", "re-copy it from Space Ranger outs/spatial/.") from None
    missing = [c for c in _POS_COLS if c not in df.columns]
    if missing:
        raise InputError(path, f"the positions file lacks columns {missing}.", f"give columns {_POS_COLS}.")
    bc = df["barcode"].astype(str).to_numpy()
    C.check_unique(bc, path)
    num = {}
    for c in _POS_COLS[1:]:
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any() or not np.isfinite(v.to_numpy(np.float64)).all():
            line = int(np.flatnonzero(v.isna().to_numpy() | ~np.isfinite(v.to_numpy(np.float64)))[0])
            raise InputError(path, f"column {c} holds values that are not finite numbers (e.g. "
                             f"{df[c].iloc[line]!r}, row {line + 1}).", f"make every {c} a number.")
        num[c] = v.to_numpy(np.float64)
    xy = np.column_stack([num["pxl_col_in_fullres"], num["pxl_row_in_fullres"]])
    if (np.abs(xy) > 1e7).any():
        raise InputError(path, "some spot pixel positions are beyond 10 million px: no slide is that large.",
                         "fix pxl_row_in_fullres / pxl_col_in_fullres (full-resolution image pixels).")
    return bc, num["in_tissue"].astype(int), xy, path, np.column_stack([num["array_col"], num["array_row"]])


def read_scalefactors(spatial: Path) -> tuple[dict[str, Any], Path | None]:
    path = spatial / "scalefactors_json.json"
    if not path.is_file():
        return {}, None
    try:
        sf = json.loads(path.read_text())
        if not isinstance(sf, dict):
            raise InputError(path, f"the scale factors are a JSON {type(sf).__name__}, not an object.",
                             "re-copy it from Space Ranger outs/spatial/.")
        return sf, path
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"the scale factors are not valid JSON ({exc}).", "re-copy it from Space Ranger outs/spatial/.") from None


def _visium_um(user, sf, sf_path, array_cr, xy, pos_path, slide, coords, outs, notes) -> tuple[float, str]:
    """um/px of a Visium sample: from the 100 um lattice of array positions, checked against the scale factors.

    ``spot_diameter_fullres`` is the pixel span of a theoretical 65 um spot (the 55 um capture area plus
    margin), so ``65 / spot_diameter_fullres`` is a second estimate; more than 3% apart, a warning says so.
    """
    from stfeat.io._lattice import fit_lattice

    d = sf.get("spot_diameter_fullres")
    if d is not None:
        try:
            d = float(d)
        except (TypeError, ValueError):
            d = float("nan")
        if not (np.isfinite(d) and d > 0):
            raise InputError(sf_path, f"spot_diameter_fullres is {sf.get('spot_diameter_fullres')!r}, not a positive "
                             "number of pixels.", "re-copy scalefactors_json.json from Space Ranger outs/spatial/, "
                             "or pass --um-per-px.")
    if user is not None:
        return float(user), "user"
    sf_um = K.VISIUM_SPOT_FULLRES_UM / d if d else None
    # array_col steps 2 per 100 um along a row; array_row steps 100 * sqrt(3) / 2 um
    u = np.column_stack([array_cr[:, 0] * K.VISIUM_PITCH_UM / 2, array_cr[:, 1] * K.VISIUM_PITCH_UM * np.sqrt(3) / 2])
    try:
        fit = fit_lattice(u, xy, path=pos_path, what="positions file")
    except InputError as exc:
        if sf_um is None and (slide is None or slide.um_per_px is None):
            raise
        notes.warn(f"{pos_path.name}: no usable spot lattice ({exc.problem}); using the scale factors.")
        fit = None
    if fit is not None:
        um = fit.um_per_px
        src = (f"spot-lattice (Visium, {K.VISIUM_PITCH_UM:g} um centre to centre, robust fit of array_row/array_col "
               f"to pixel positions in {pos_path.name}; {fit.describe()})")
        if sf_um is not None:
            gap = abs(sf_um / um - 1)
            src += f"; scale factors give {sf_um:.4f} ({K.VISIUM_SPOT_FULLRES_UM:g} um / spot_diameter_fullres)"
            if gap > 0.03:
                notes.warn(f"{pos_path.name}: the spot lattice gives {um:.4f} um/px but {sf_path.name if sf_path else 'the scale factors'} "
                           f"give {sf_um:.4f} ({K.VISIUM_SPOT_FULLRES_UM:g} um / spot_diameter_fullres {d:g} px), "
                           f"{100 * gap:.1f}% apart; using the lattice. Pass --um-per-px if you know the pixel size.")
        return um, src
    if sf_um is not None:
        return sf_um, f"spaceranger scalefactors ({K.VISIUM_SPOT_FULLRES_UM:g} um spot span / spot_diameter_fullres)"
    return float(slide.um_per_px), str(slide.um_per_px_source)


def read_spaceranger(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None,
) -> Sample:
    """Read a Space Ranger ``outs`` folder (or the folder holding ``outs/``)."""
    import pandas as pd

    from stfeat.slide import open_slide

    outs = outs_dir(path)
    if outs is None:
        raise InputError(path, "this is not a Space Ranger outs/ folder (needs spatial/ and "
                         f"{_H5} or {_MTX}/).", "point to the outs/ folder of a Space Ranger run.")
    notes = C.Notes()
    if (outs / _H5).is_file():
        counts_path = outs / _H5
        X, bc, ids, names, ftype = _read_h5(counts_path)
    else:
        counts_path = outs / _MTX
        X, bc, ids, names, ftype = _read_mtx(counts_path)
    C.check_unique(bc, counts_path)
    ge = ftype == "Gene Expression"
    if not ge.all():
        notes.note(f"kept {int(ge.sum())} Gene Expression features of {len(ge)} (dropped other feature types)")
        X, ids, names = X[:, np.flatnonzero(ge)], ids[ge], names[ge]
    X = C.check_counts(X, counts_path)
    spatial = outs / "spatial"
    pbc, in_tissue, xy, pos_path, array_cr = read_positions(spatial)
    tissue = in_tissue == 1
    ci, pi = C.join_positions(bc, pbc[tissue], counts_path, pos_path, notes)
    n_off = int((~tissue).sum())
    X, bc, coords = X[ci], bc[ci], xy[tissue][pi]
    sf, sf_path = read_scalefactors(spatial)

    scale, img_path = 1.0, None
    if image is not None:
        img_path = Path(image)
    else:
        for key, name in (("tissue_hires_scalef", "tissue_hires_image.png"), ("tissue_lowres_scalef", "tissue_lowres_image.png")):
            if (spatial / name).is_file():
                if key not in sf:
                    raise InputError(sf_path or spatial / "scalefactors_json.json",
                                     f"{name} exists but its scale factor {key!r} is missing.",
                                     "copy scalefactors_json.json from Space Ranger outs/spatial/, or pass image=FULLRES.")
                try:
                    scale = float(sf[key])
                except (TypeError, ValueError):
                    scale = float("nan")
                if not (np.isfinite(scale) and scale > 0):
                    raise InputError(sf_path, f"{key} is {sf[key]!r}, not a positive number.",
                                     "copy scalefactors_json.json from Space Ranger outs/spatial/, or pass image=FULLRES.")
                img_path = spatial / name
                break
    slide = None
    if img_path is not None:
        slide = open_slide(img_path, scale=scale)
        if scale != 1.0:
            notes.warn(
                f"{img_path.name}: no full-resolution image given; using this {'hires' if 'hires' in img_path.name else 'lowres'} "
                f"image at {scale:g} image px per full-res px (reduced detail). Pass image=FULLRES (--image) for full resolution."
            )
        inside = C.drop_outside_image(coords, slide, img_path, notes)
        X, bc, coords = X[inside], bc[inside], coords[inside]
    else:
        notes.warn(f"{outs}: no image found (no --image and no tissue_hires/lowres PNG); expression only.")

    um, src = _visium_um(um_per_px, sf, sf_path, array_cr, xy, pos_path, slide, coords, outs, notes)
    if n_off:
        notes.note(f"{n_off} positions are off tissue (in_tissue 0) and were not kept")
    sid = sample_id or (outs.parent.name if outs.name == "outs" else outs.name)
    return C.build_sample(
        X=X, barcodes=bc, genes=names, coords=coords, slide=slide, sample_id=sid, patient=patient, fmt=FORMAT,
        um_per_px=um, um_source=src, source_path=outs, notes=notes,
        var=pd.DataFrame({"gene_ids": ids.astype(str)}),
    )
