"""One entry point, :func:`read_sample`, that detects the format of a path and calls its reader."""

from __future__ import annotations

import logging
from pathlib import Path

from stfeat.errors import InputError
from stfeat.io import anndata_reader as A
from stfeat.io import legacy_st as L
from stfeat.io import spaceranger as S
from stfeat.io import visium_hd as HD
from stfeat.io import spatialdata_io as SD
from stfeat.io import xenium as XE
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMATS = ("legacy-st", "spaceranger", "visium-hd", "xenium", "spatialdata", "hest", "anndata")


def detect_format(path: str | Path) -> str:
    """The format name of a sample path (one of :data:`FORMATS`); raises InputError when unknown."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "the path does not exist.", "check the spelling, or that the data is mounted.")
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".h5ad"):
            return "hest" if p.parent.name == "st" and (p.parent.parent / "wsis").is_dir() else "anndata"
        if name.endswith(L._COUNT_SUFFIXES):
            return "legacy-st"
        if name.endswith(".h5") and p.parent.joinpath("spatial").is_dir():
            return "spaceranger"
        raise _unknown(p)
    if L.is_her2st_root(p) or L.stutility_sections(p):
        return "legacy-st"
    if HD.hd_layout(p) is not None:  # before spaceranger: a square_NNNum/ folder looks like Visium outs
        return "visium-hd"
    if XE.xenium_outs(p) is not None:
        return "xenium"
    if SD.is_spatialdata(p):
        return "spatialdata"
    if S.outs_dir(p) is not None:
        return "spaceranger"
    if A.is_hest_root(p):
        return "hest"
    if A.single_h5ad(p) is not None:
        return "anndata"
    raise _unknown(p)


def _unknown(p: Path) -> InputError:
    return InputError(
        p,
        "unknown layout: not a legacy ST section (counts TSV + spot file), a Space Ranger outs/ folder "
        "(filtered_feature_bc_matrix + spatial/; Visium HD: binned_outputs/), a Xenium outs/ folder "
        "(experiment.xenium + cell_feature_matrix.h5), a HEST-1k folder (st/*.h5ad, wsis/, metadata/) or an .h5ad.",
        "point to one of those, or describe the samples in a manifest (CSV/YAML with sample_id, patient, path).",
    )


def read_sample(
    path: str | Path,
    *,
    image: str | Path | None = None,
    um_per_px: float | None = None,
    sample_id: str | None = None,
    patient: str | None = None,
    fmt: str | None = None,
    allow_normalized: bool = False,
    bin_size_um: float | str | None = None,
    alignment: str | Path | None = None,
) -> Sample:
    """Read one spatial transcriptomics sample, whatever its format, into a :class:`Sample`.

    Parameters
    ----------
    path
        A legacy ST folder or counts file, a Space Ranger ``outs/`` folder, a HEST-1k root or
        ``st/{id}.h5ad``, or an ``.h5ad`` (or a folder holding one with its image).
    image
        The H&E image, overriding the one found beside the data (full resolution, same pixel frame
        as the spot positions).
    um_per_px
        Micrometres per full-resolution pixel; always wins over what the files state (source ``"user"``).
    sample_id
        Sample name; in a folder holding several sections/samples it picks one (e.g. ``"C2"``).
    patient
        Patient id, overriding what the files state.
    fmt
        Skip detection: one of :data:`FORMATS`.
    bin_size_um
        Visium HD: the bin size to read (2, 8 or 16; default 8), or "cells" for the segmented cells.
    alignment
        Xenium: the H&E -> morphology ``*_imagealignment.csv`` (default: the one in ``outs/``).
    allow_normalized
        For AnnData inputs whose X is not raw counts and which hold no raw layer: keep X with a warning
        instead of raising.

    Returns
    -------
    Sample
        Raw counts (CSR float32), barcodes, spot centres (level-0 px, x/y), um/px and its source,
        warnings and provenance in ``adata.uns["stfeat"]``, and the :class:`~stfeat.slide.Slide`.
    """
    p = Path(path).expanduser()
    if um_per_px is not None and not (float(um_per_px) > 0):
        raise InputError(p, f"um_per_px must be a positive number, got {um_per_px}.", "give micrometres per pixel, e.g. 0.5.")
    if image is not None and not Path(image).is_file():
        raise InputError(image, "the image file does not exist.", "check the --image path.")
    kind = fmt or detect_format(p)
    if kind not in FORMATS:
        raise InputError(p, f"unknown format {kind!r}.", f"use one of {', '.join(FORMATS)}.")
    if not p.exists():
        raise InputError(p, "the path does not exist.", "check the spelling, or that the data is mounted.")
    img = Path(image) if image is not None else None
    log.debug("reading %s as %s", p, kind)
    if kind == "legacy-st":
        return L.read_legacy_st(p, image=img, um_per_px=um_per_px, sample_id=sample_id, patient=patient)
    if kind == "spaceranger":
        return S.read_spaceranger(p.parent if p.is_file() else p, image=img, um_per_px=um_per_px,
                                  sample_id=sample_id, patient=patient)
    if kind == "visium-hd":
        return HD.read_visium_hd(p, image=img, um_per_px=um_per_px, sample_id=sample_id, patient=patient,
                                 bin_size_um=bin_size_um)
    if kind == "xenium":
        return XE.read_xenium(p, image=img, um_per_px=um_per_px, sample_id=sample_id, patient=patient,
                              alignment=Path(alignment) if alignment is not None else None)
    if kind == "spatialdata":
        return SD.read_spatialdata(p, um_per_px=um_per_px, sample_id=sample_id, patient=patient)
    if kind == "hest":
        return A.read_hest(p, image=img, um_per_px=um_per_px, sample_id=sample_id, patient=patient,
                           allow_normalized=allow_normalized)
    return A.read_anndata(p, image=img, um_per_px=um_per_px, sample_id=sample_id, patient=patient,
                          allow_normalized=allow_normalized)
