"""10x Xenium ``outs/``: cells as spots, with a post-Xenium H&E registered by 10x's alignment matrix.

Layout read::

    outs/experiment.xenium              JSON; "pixel_size" = micrometres per morphology-image pixel (0.2125)
    outs/cells.parquet                  cell_id, x_centroid, y_centroid (micrometres)   (or cells.csv.gz)
    outs/cell_feature_matrix.h5         10x feature-barcode matrix, barcodes = cell ids
    *_he_image.ome.tif                  the H&E (given with image=, or found in outs/)
    *_he_imagealignment.csv             3 x 3 affine, H&E pixels -> morphology pixels (10x Xenium Explorer)

A cell centre in micrometres becomes morphology pixels (divide by ``pixel_size``), then H&E level-0
pixels through the inverse of the alignment matrix (spatialdata-io reads the same file as the
image -> global transformation). The H&E's micrometres per pixel is ``pixel_size`` times the
matrix's linear scale, ``sqrt(|det A[:2, :2]|)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io import spaceranger as S
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "xenium"
SPECS = "experiment.xenium"
MATRIX = "cell_feature_matrix.h5"
CELLS = ("cells.parquet", "cells.csv.gz", "cells.csv")
MIN_INSIDE = 0.5  # below this fraction of cells on the H&E, the registration is wrong, not the crop


def is_xenium(path: Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SPECS).is_file() and (p / MATRIX).is_file()


def xenium_outs(path: Path) -> Path | None:
    for d in (Path(path), Path(path) / "outs"):
        if is_xenium(d):
            return d
    return None


def pixel_size(outs: Path) -> float:
    """Micrometres per morphology pixel from ``experiment.xenium``; InputError when unknown."""
    path = outs / SPECS
    fix = (f"copy {SPECS} from the Xenium outs/ folder: its pixel_size (micrometres per morphology pixel, "
           "0.2125 on Xenium Analyzer output) places the cells on the image.")
    if not path.is_file():
        raise InputError(path, "the Xenium pixel size is unknown: experiment.xenium is missing.", fix)
    try:
        specs = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"experiment.xenium is not valid JSON ({exc}).", fix) from None
    v = specs.get("pixel_size") if isinstance(specs, dict) else None
    try:
        ps = float(v)
    except (TypeError, ValueError):
        ps = float("nan")
    if not (np.isfinite(ps) and ps > 0):
        raise InputError(path, f"the Xenium pixel size is unknown: experiment.xenium has no positive "
                         f"'pixel_size' (found {v!r}).", fix)
    return ps


def read_alignment(path: Path) -> np.ndarray:
    """The 3 x 3 H&E -> morphology affine of a ``*_imagealignment.csv``, checked."""
    import pandas as pd

    fix = "export the H&E alignment again from Xenium Explorer (Image Alignment -> download the matrix CSV)."
    try:
        a = pd.read_csv(path, header=None).to_numpy(dtype=np.float64)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(path, f"the alignment matrix cannot be read as numbers ({exc}).", fix) from None
    if a.shape != (3, 3) or not np.isfinite(a).all():
        raise InputError(path, f"the alignment matrix is {a.shape[0]} x {a.shape[1] if a.ndim > 1 else 1}, "
                         "not a finite 3 x 3 affine.", fix)
    if not np.allclose(a[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(path, f"the last row of the alignment matrix is {a[2].tolist()}, not [0, 0, 1] "
                         "(a projective matrix, not an affine one).", fix)
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise InputError(path, "the alignment matrix is singular.", fix)
    return a


def _find_one(outs: Path, pattern: str) -> Path | None:
    hits = sorted(outs.glob(pattern))
    return hits[0] if len(hits) == 1 else None


def _read_cells(outs: Path):
    import pandas as pd

    path = next((outs / n for n in CELLS if (outs / n).is_file()), None)
    if path is None:
        raise InputError(outs / CELLS[0], "no cells table (cells.parquet or cells.csv.gz).",
                         "copy cells.parquet from the Xenium outs/ folder.")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"the cells table cannot be read ({exc}).", "re-copy it from the Xenium outs/.") from None
    missing = [c for c in ("cell_id", "x_centroid", "y_centroid") if c not in df.columns]
    if missing:
        raise InputError(path, f"the cells table lacks columns {missing}.",
                         "give Xenium's cells.parquet (cell_id, x_centroid, y_centroid in micrometres).")
    ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in df["cell_id"]])
    C.check_unique(ids, path, "cell ids")
    xy_um = df[["x_centroid", "y_centroid"]].to_numpy(np.float64)
    return ids, xy_um, df, path


def read_xenium(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, alignment: Path | None = None,
) -> Sample:
    """Read a Xenium ``outs/`` folder: cells (centroids) as spots, on the registered H&E.

    Parameters
    ----------
    image
        The post-Xenium H&E (default: the one ``*he_image.ome.tif`` in ``outs/``).
    alignment
        The 3 x 3 H&E -> morphology matrix CSV (default: the one ``*he_imagealignment.csv`` in
        ``outs/``); without one the H&E is taken to be in the morphology pixel frame already.
    um_per_px
        Micrometres per H&E pixel, overriding the one derived from the matrix.
    """
    import pandas as pd

    from stfeat.slide import open_slide

    outs = xenium_outs(Path(path))
    if outs is None:
        raise InputError(path, f"this is not a Xenium outs/ folder (needs {SPECS} and {MATRIX}).",
                         "point to the outs/ folder of a Xenium run.")
    notes = C.Notes()
    ps = pixel_size(outs)
    X, bc, ids, names, ftype = S._read_h5(outs / MATRIX)
    C.check_unique(bc, outs / MATRIX, "cell ids")
    ge = ftype == "Gene Expression"
    if not ge.all():
        notes.note(f"kept {int(ge.sum())} Gene Expression features of {len(ge)} (dropped control probes/codewords)")
        X, ids, names = X[:, np.flatnonzero(ge)], ids[ge], names[ge]
    X = C.check_counts(X, outs / MATRIX)
    cid, xy_um, cells_df, cells_path = _read_cells(outs)
    ci, pi = C.join_positions(bc, cid, outs / MATRIX, cells_path, notes)
    X, bc, xy_um = X[ci], bc[ci], xy_um[pi]
    morph = xy_um / ps

    img = Path(image) if image is not None else _find_one(outs, "*he_image.ome.tif")
    aln = Path(alignment) if alignment is not None else (
        _find_one(outs, "*he_imagealignment.csv") if img is not None else None)
    if alignment is not None and not aln.is_file():  # type: ignore[union-attr]
        raise InputError(aln, "the alignment matrix file does not exist.", "check the alignment path.")
    slide, extra = None, {"xenium_pixel_size_um": ps}
    if img is None:
        notes.warn(f"{outs}: no H&E given (image=) or found (*he_image.ome.tif); expression only, cells in "
                   "morphology-image pixels.")
        coords, um, src = morph, ps, "xenium experiment.xenium pixel_size (morphology pixels)"
    else:
        if aln is None:
            notes.warn(f"{img.name}: no alignment matrix (*_imagealignment.csv); the H&E is taken to be in the "
                       "morphology pixel frame already.")
            A = np.eye(3)
        else:
            A = read_alignment(aln)
            extra["alignment_path"] = str(aln)
            extra["alignment_matrix"] = A.tolist()
        Ainv = np.linalg.inv(A)
        coords = morph @ Ainv[:2, :2].T + Ainv[:2, 2]
        slide = open_slide(img)
        _check_on_image(coords, morph, A, slide, aln or img)
        inside = C.drop_outside_image(coords, slide, img, notes)
        X, bc, coords, xy_um, pi = X[inside], bc[inside], coords[inside], xy_um[inside], pi[inside]
        um = ps * float(np.sqrt(abs(np.linalg.det(A[:2, :2]))))
        src = ("xenium pixel_size x alignment scale (sqrt |det A|)" if aln is not None
               else "xenium experiment.xenium pixel_size (no alignment)")
    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    obs = pd.DataFrame(index=pd.Index(bc.astype(str)))
    for col in ("cell_area", "nucleus_area", "transcript_counts"):
        if col in cells_df.columns:
            obs[col] = cells_df[col].to_numpy()[pi]
    obs["x_um"], obs["y_um"] = xy_um[:, 0], xy_um[:, 1]  # the vendor's micrometre frame, kept for joins
    sid = sample_id or (outs.parent.name if outs.name == "outs" else outs.name)
    return C.build_sample(
        X=X, barcodes=bc, genes=names, coords=coords, slide=slide, sample_id=sid, patient=patient, fmt=FORMAT,
        um_per_px=um, um_source=src, source_path=outs, notes=notes,
        var=pd.DataFrame({"gene_ids": ids.astype(str)}), obs=obs, extra=extra,
    )


def _check_on_image(coords: np.ndarray, morph: np.ndarray, A: np.ndarray, slide, path: Path) -> None:
    """InputError when the registration sends most cells off the H&E (a wrong or inverted matrix)."""
    w, h = slide.dimensions

    def frac(xy: np.ndarray) -> float:
        return float(np.mean((xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)))

    f = frac(coords)
    if f >= MIN_INSIDE:
        return
    hint = ""
    if not np.allclose(A, np.eye(3)):
        g = frac(morph @ A[:2, :2].T + A[:2, 2])
        if g >= MIN_INSIDE:
            hint = (f" Applied the other way round (morphology -> H&E) it would put {g:.0%} of them on the image: "
                    "the file looks inverted.")
    raise InputError(
        path,
        f"the alignment sends {1 - f:.0%} of {len(coords)} cells off the H&E ({w} x {h} px; cells land at "
        f"x {coords[:, 0].min():.0f}..{coords[:, 0].max():.0f}, y {coords[:, 1].min():.0f}..{coords[:, 1].max():.0f})."
        + hint,
        "check that the H&E and its *_imagealignment.csv (H&E px -> morphology px) belong to this run; "
        "re-export the matrix from Xenium Explorer.",
    )
