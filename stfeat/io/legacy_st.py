"""Legacy Spatial Transcriptomics (Stahl et al. 2016): counts TSV + spot file + full-resolution H&E.

Two layouts:

* HER2ST (``almaan/her2st``): ``ST-cnts/{S}.tsv.gz``, ``ST-spotfiles/{S}_selection.tsv``,
  ``ST-imgs/{patient}/{S}/*.jpg``. Sections are named patient letter + section number (C2 = patient C).
* STUtility style: one folder with ``{S}.tsv``, ``alignment_table_{S}.tsv`` (or ``{S}_selection.tsv``)
  and ``{S}.jpg``.

Counts rows are ``"{x}x{y}"`` array positions; the spot file's x, y columns give the same key, pixel_x and
pixel_y the spot centre in full-resolution pixels, and ``selected`` (when present) marks spots under tissue.

Region labels: when ``ST-pat/{S}_labeled_coordinates.tsv`` exists (HER2ST's pathologist annotation: columns
x, y = refined array position, pixel_x, pixel_y, label), its labels are joined to the spots by array
position (x, y rounded = the spot key; the label file's pixel frame is not the image's) and stored as
``obs["region"]`` (categorical; spots without a label are NaN).
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import numpy as np

from stfeat import _constants as K
from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io._lattice import outlier_note
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "legacy-st"
_COUNT_SUFFIXES = (".tsv.gz", ".tsv", ".txt.gz", ".txt", ".csv.gz", ".csv")
_HER2ST_NAME = re.compile(r"^([A-Za-z])(\d+)$")


def _strip(name: str) -> str:
    for suf in _COUNT_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def is_her2st_root(path: Path) -> bool:
    return path.is_dir() and (path / "ST-cnts").is_dir() and (path / "ST-spotfiles").is_dir()


def her2st_sections(root: Path) -> list[str]:
    return sorted(_strip(p.name) for p in (root / "ST-cnts").iterdir() if p.name.endswith(_COUNT_SUFFIXES))


def _spot_file_for(folder: Path, section: str) -> Path | None:
    for cand in (
        folder / f"{section}_selection.tsv",
        folder / f"alignment_table_{section}.tsv",
        folder / f"{section}_alignment.tsv",
        folder / f"spots_{section}.tsv",
    ):
        if cand.is_file():
            return cand
    return None


def stutility_sections(folder: Path) -> list[str]:
    """Sections of a flat folder: counts files with a matching spot/alignment file."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(_COUNT_SUFFIXES):
            s = _strip(p.name)
            if _spot_file_for(folder, s) is not None:
                out.append(s)
    return out


def section_for(path: Path, sample_id: str | None) -> str | None:
    """The section a sample id means at ``path``: the id itself when the folder holds such a section, else
    the counts file's section or the folder's only section (a sample id may differ from the file name)."""
    if sample_id is None:
        return None
    if path.is_file():
        return _strip(path.name)
    try:
        secs = her2st_sections(path) if is_her2st_root(path) else stutility_sections(path) if path.is_dir() else []
    except OSError:
        return sample_id
    if sample_id in secs:
        return sample_id
    return secs[0] if len(secs) == 1 else sample_id


def locate(path: Path, section: str | None) -> dict[str, object]:
    """Find counts, spot file, image and patient for one section at ``path`` (root, folder or counts file)."""
    if path.is_file():
        section = section or _strip(path.name)
        counts = path
        folder = path.parent
        root = folder.parent if folder.name == "ST-cnts" else None
    elif is_her2st_root(path):
        root, folder, counts = path, path / "ST-cnts", None
    else:
        root, folder, counts = None, path, None
    if section is None:
        secs = her2st_sections(root) if root is not None else stutility_sections(folder)
        if len(secs) != 1:
            raise InputError(
                path,
                f"the folder holds {len(secs)} legacy ST sections ({', '.join(secs) or 'none'}), so which one is meant is unclear.",
                "pass sample_id=SECTION, or list them all with stfeat.io.resolve_samples(path).",
            )
        section = secs[0]
    if counts is None:
        counts = next((folder / f"{section}{s}" for s in _COUNT_SUFFIXES if (folder / f"{section}{s}").is_file()), None)
        if counts is None:
            raise InputError(
                folder / f"{section}.tsv.gz",
                f"the counts file of section {section} is missing.",
                f"put {section}.tsv(.gz) (spots x genes, rows named '{{x}}x{{y}}') in {folder}.",
            )
    spot_dirs = [root / "ST-spotfiles"] if root is not None else []
    spot_dirs.append(counts.parent)
    spots = next((f for d in spot_dirs if (f := _spot_file_for(d, section)) is not None), None)
    if spots is None:
        raise InputError(
            spot_dirs[0] / f"{section}_selection.tsv",
            f"the spot file of section {section} is missing (looked for {section}_selection.tsv and "
            f"alignment_table_{section}.tsv).",
            "add the spot file with columns x, y, pixel_x, pixel_y (and selected).",
        )
    image, patient, patient_note = None, None, None
    if root is not None and (root / "ST-imgs").is_dir():
        hits = sorted(p for p in (root / "ST-imgs").glob(f"*/{section}/*") if p.suffix.lower() in C.IMAGE_SUFFIXES)
        if hits:
            image = hits[0]
            patient = image.parent.parent.name
            patient_note = (
                f"patient {patient!r} from the HER2ST layout: sections are named patient letter + section number "
                f"and the image lies in ST-imgs/{patient}/{section}/"
            )
    if image is None:
        image = C.find_image(counts.parent, section)
    if patient is None and root is not None and (m := _HER2ST_NAME.match(section)):
        patient = m.group(1).upper()
        patient_note = f"patient {patient!r} from the HER2ST section name {section!r} (patient letter + section number)"
    return {"section": section, "counts": counts, "spots": spots, "image": image, "patient": patient,
            "patient_note": patient_note, "root": root or folder}


def _read_counts(path: Path):  # -> (X csr, row ids, genes)
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", index_col=0, engine="c", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError,
            zlib.error) as exc:  # a damaged gzip stream ends in zlib.error
        raise InputError(path, f"the counts table cannot be parsed ({exc}).",
                         "give a tab-separated spots x genes table with a header row of genes.") from None
    non_num = [c for c, t in df.dtypes.items() if t.kind not in "biuf"]
    if non_num:
        raise InputError(path, f"{len(non_num)} gene columns are not numeric (e.g. {non_num[:3]}).",
                         "the counts must be whole numbers >= 0 in every cell.")
    ids = df.index.astype(str).to_numpy()
    C.check_unique(ids, path, "spot ids")
    X = C.check_counts(df.to_numpy(), path)
    return X, ids, df.columns.astype(str).to_numpy()


def _read_spots(path: Path):
    """(keys, pixel xy, lattice) of the selected spots; ``lattice`` is (fit, step_um, array words) or an error."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError,
            zlib.error) as exc:
        raise InputError(path, f"the spot file cannot be parsed ({exc}).", "give a tab-separated table.") from None
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(df.columns):
        raise InputError(path, f"the spot file lacks columns {sorted(need - set(df.columns))} (has {list(df.columns)}).",
                         "give columns x, y (array position), pixel_x, pixel_y (spot centre in full-res px).")
    for c in ("x", "y", "pixel_x", "pixel_y", *(["selected"] if "selected" in df.columns else [])):
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna() & df[c].notna()
        if bad.any():
            rows = [int(r) + 2 for r in np.flatnonzero(bad.to_numpy())[:5]]  # +2: header line, 1-based
            raise InputError(path, f"column {c} holds {int(bad.sum())} values that are not numbers (e.g. "
                             f"{df[c][bad].iloc[0]!r} on line {rows[0]}; lines {rows}).",
                             f"make every {c} a number.")
        df[c] = num.astype(np.float64)
    big = (df[["pixel_x", "pixel_y"]].abs() > 1e7).any(axis=1).to_numpy()
    if big.any():
        line = int(np.flatnonzero(big)[0]) + 2
        raise InputError(path, f"{int(big.sum())} spot pixel positions are beyond 10 million px (line {line}: "
                         f"{df.pixel_x.iloc[line - 2]:g}, {df.pixel_y.iloc[line - 2]:g}): no slide is that large.",
                         "fix pixel_x/pixel_y (spot centres in full-resolution image pixels).")
    lattice = _array_lattice(df, path)
    sel = (df["selected"] == 1).to_numpy() if "selected" in df.columns else np.ones(len(df), bool)
    xy_all = df[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    arr = df[["x", "y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(arr[sel]).all():
        raise InputError(path, "some selected spots have no array position (x, y).", "fill x and y for every spot.")
    keys = np.array([f"{int(round(a))}x{int(round(b))}" for a, b in arr[sel]], dtype=object).astype(str)
    C.check_unique(keys, path, "array positions")
    xy = xy_all[sel]
    if not np.isfinite(xy).all():
        raise InputError(path, "some spot pixel positions are missing or not numbers.", "fill pixel_x and pixel_y for every selected spot.")
    if not isinstance(lattice, InputError):
        fit = lattice[0]
        is_out = np.zeros(len(df), bool)
        is_out[fit.far] = True
        lattice = (*lattice, is_out[sel], np.flatnonzero(sel) + 2)  # + file line of each selected spot
    return keys, xy, lattice


def _array_lattice(df, path: Path):
    """(LatticeFit, um per array step, array words) fitted from x, y to pixel_x, pixel_y, or the InputError.

    A nearest-neighbour median is biased low by the jitter of detected spot centres (HER2ST: 271 px
    against a true 290 px step), so the lattice is fitted over every row of the file, robustly (see
    :mod:`stfeat.io._lattice`): a few mistyped rows are left out and named instead of skewing the fit.
    The 1k ST array is a square grid with a 200 um step; the 2k array uses only every other position
    (x + y of one parity, a checkerboard) with a 100 um step.
    """
    from stfeat.io._lattice import fit_lattice

    d = df[["x", "y", "pixel_x", "pixel_y"]]
    fin = np.isfinite(d.to_numpy(np.float64)).all(axis=1)
    xy = d[["x", "y"]].to_numpy(np.float64)
    parity = np.unique((np.round(xy[fin, 0]) + np.round(xy[fin, 1])).astype(np.int64) % 2)
    step_um = K.LEGACY_ST_PITCH_UM / 2 if len(parity) == 1 else K.LEGACY_ST_PITCH_UM
    words = "1k array, square grid" if step_um == K.LEGACY_ST_PITCH_UM else "2k array, checkerboard grid"
    try:
        fit = fit_lattice(xy * step_um, d[["pixel_x", "pixel_y"]].to_numpy(np.float64), path=path)
    except InputError as exc:
        return exc
    return fit, step_um, words


REGION_KEY = "region"


def label_file(root: Path, section: str) -> Path | None:
    p = Path(root) / "ST-pat" / f"{section}_labeled_coordinates.tsv"
    return p if p.is_file() else None


def read_region_labels(path: Path, keys: np.ndarray, notes: C.Notes):
    """Per spot (``keys`` = "{x}x{y}"), the label of ``path`` at the same array position, else NaN."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"the region label file cannot be parsed ({exc}).",
                         "give a tab-separated table with columns x, y and label, or remove the file.") from None
    need = {"x", "y", "label"}
    if not need <= set(df.columns):
        raise InputError(path, f"the region label file lacks columns {sorted(need - set(df.columns))} "
                         f"(has {list(df.columns)}).", "give columns x, y (array position) and label.")
    x, y = pd.to_numeric(df["x"], errors="coerce"), pd.to_numeric(df["y"], errors="coerce")
    ok = x.notna() & y.notna() & df["label"].notna()
    if (~ok).any():
        notes.warn(f"{int((~ok).sum())} rows of {path.name} have no array position or label; not used")
    lab_keys = [f"{int(round(a))}x{int(round(b))}" for a, b in zip(x[ok], y[ok])]
    table = pd.Series(df["label"][ok].astype(str).str.strip().to_numpy(), index=lab_keys)
    dup = table.index.duplicated(keep=False)
    if dup.any():
        raise InputError(path, f"{int(dup.sum())} rows share an array position (e.g. {table.index[dup][0]}).",
                         "give one label per spot.")
    labels = table.reindex(pd.Index(np.asarray(keys).astype(str)))
    n_hit = int(labels.notna().sum())
    notes.note(f"region labels from {path.name}: {n_hit} of {len(keys)} spots labelled, joined by array position "
               f"({', '.join(f'{k} {v}' for k, v in labels.value_counts().items())})")
    if n_hit == 0:
        notes.warn(f"no spot matches a row of {path.name} by array position; no region labels attached")
        return None
    return pd.Categorical(labels.to_numpy(dtype=object))


def read_legacy_st(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, section: str | None = None,
) -> Sample:
    """Read one legacy ST section. ``section`` (or ``sample_id``) picks it from a multi-section folder."""
    from stfeat.slide import open_slide

    loc = locate(path, section or section_for(path, sample_id))
    notes = C.Notes()
    counts_path, spots_path = loc["counts"], loc["spots"]
    X, ids, genes = _read_counts(counts_path)  # type: ignore[arg-type]
    keys, xy, lattice = _read_spots(spots_path)  # type: ignore[arg-type]
    if not isinstance(lattice, InputError) and lattice[3].any():
        out = lattice[3]
        labels = [f"{k} (line {ln})" for k, ln in zip(keys[out], lattice[4][out])]
        notes.warn(outlier_note(lattice[0], labels, spots_path.name))  # type: ignore[union-attr]
        keys, xy = keys[~out], xy[~out]
    # counts tables include spots off the tissue: only spot-file (selected) spots are kept, silently
    ci, pi = C.join_positions(ids, keys, counts_path, spots_path, notes, warn_counts=False)  # type: ignore[arg-type]
    n_off = len(ids) - len(ci)
    if n_off:
        notes.note(f"{n_off} counts rows are not selected spots in {spots_path.name} (off tissue); not kept")
    X, ids, coords = X[ci], ids[ci], xy[pi]
    img_path = Path(image) if image is not None else loc["image"]
    if img_path is None:
        raise InputError(counts_path, f"no H&E image found for section {loc['section']}.",
                         "pass image=PATH (CLI: --image PATH).")
    slide = open_slide(img_path, um_per_px=um_per_px)  # type: ignore[arg-type]
    inside = C.drop_outside_image(coords, slide, img_path, notes)  # type: ignore[arg-type]
    X, ids, coords = X[inside], ids[inside], coords[inside]
    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    elif slide.um_per_px is not None:
        um, src = slide.um_per_px, slide.um_per_px_source
    elif isinstance(lattice, InputError):
        raise lattice
    else:
        fit, step_um, array = lattice[:3]
        um = fit.um_per_px
        src = (f"spot-lattice (estimated: legacy ST {array}, {step_um:g} um per array step, robust fit of "
               f"array positions to pixel positions in {spots_path.name}; {fit.describe()})")  # type: ignore[union-attr]
        notes.note(f"pixel size {um:.4f} um/px from the spot lattice: {fit.describe()}")
    if loc["patient_note"] and (patient is None or patient == loc["patient"]):
        notes.note(str(loc["patient_note"]))
    obs = None
    lf = label_file(loc["root"], str(loc["section"]))  # type: ignore[arg-type]
    if lf is not None:
        import pandas as pd

        regions = read_region_labels(lf, ids, notes)
        if regions is not None:
            obs = pd.DataFrame({REGION_KEY: regions}, index=pd.Index(np.asarray(ids).astype(str)))
    return C.build_sample(
        X=X, barcodes=ids, genes=genes, coords=coords, slide=slide, obs=obs,
        sample_id=sample_id or str(loc["section"]), patient=patient or loc["patient"], fmt=FORMAT,  # type: ignore[arg-type]
        um_per_px=um, um_source=str(src), source_path=counts_path, notes=notes,  # type: ignore[arg-type]
        extra={"spot_file": str(spots_path)},
    )
