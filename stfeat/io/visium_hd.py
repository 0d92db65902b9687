"""10x Visium HD (Space Ranger 3 and 4 ``outs/``): one bin size of ``binned_outputs/square_{NNN}um/``.

Layout read (per bin size)::

    outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5      (or filtered_feature_bc_matrix/ mtx)
    outs/binned_outputs/square_008um/spatial/tissue_positions.parquet   (pxl_row_in_fullres, pxl_col_in_fullres)
    outs/binned_outputs/square_008um/spatial/scalefactors_json.json     (microns_per_pixel, bin_size_um, ...)
    outs/spatial/tissue_hires_image.png                                 (used only without image=)

Bin centres are in the pixel frame of the full-resolution H&E given to Space Ranger (``--image``); give
the same file with ``image=``. The micrometres per pixel comes from ``microns_per_pixel`` (Space Ranger
3+), else from ``bin_size_um / spot_diameter_fullres`` (a bin's side in full-resolution pixels); if neither
is there, the user must give it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io import spaceranger as S
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "visium-hd"
DEFAULT_BIN_UM = 8
_BIN_RE = re.compile(r"^square_(\d{3})um$")


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


def hd_layout(path: Path) -> tuple[Path, Path | None] | None:
    """``(outs, bin_dir or None)`` when ``path`` is a Visium HD ``outs/`` (or its parent) or one of
    its ``square_NNNum/`` folders; None otherwise."""
    path = Path(path)
    if _BIN_RE.match(path.name) and path.parent.name == "binned_outputs" and (path / "spatial").is_dir():
        return path.parent.parent, path
    for d in (path, path / "outs"):
        if (d / "binned_outputs").is_dir() and available_bins(d / "binned_outputs"):
            return d, None
    return None


def _bin_dir(outs: Path, given: Path | None, bin_size_um: float | None) -> Path:
    binned = outs / "binned_outputs"
    if given is not None and bin_size_um is None:
        return given
    b = DEFAULT_BIN_UM if bin_size_um is None else bin_size_um
    d = binned / bin_folder_name(b)
    if not d.is_dir():
        have = available_bins(binned)
        raise InputError(
            d, f"there is no {d.name}/ folder: this run holds bins of {', '.join(f'{h} um' for h in have) or 'no size'}.",
            f"pick one of those (read_sample(..., bin_size_um=N), or a bin_size_um column in a manifest), or copy "
            f"binned_outputs/{d.name}/ from Space Ranger.",
        )
    for need in ("spatial",):
        if not (d / need).is_dir():
            raise InputError(d / need, f"{d.name}/ has no {need}/ folder.",
                             f"copy binned_outputs/{d.name}/ from Space Ranger outs/ completely.")
    return d


def read_visium_hd(
    path: Path, *, image: Path | None = None, um_per_px: float | None = None, sample_id: str | None = None,
    patient: str | None = None, bin_size_um: float | None = None,
) -> Sample:
    """Read one bin size of a Visium HD run into a :class:`Sample` (bins as spots).

    Parameters
    ----------
    path
        ``outs/``, the folder holding it, or ``outs/binned_outputs/square_NNNum/``.
    image
        The full-resolution H&E given to Space Ranger; without it the hires PNG is used (reduced detail).
    bin_size_um
        2, 8 or 16 (default 8, or the folder given as ``path``).
    """
    import pandas as pd

    from stfeat.slide import open_slide

    lay = hd_layout(Path(path))
    if lay is None:
        raise InputError(path, "this is not a Visium HD outs/ folder (needs binned_outputs/square_NNNum/).",
                         "point to the outs/ folder of a Space Ranger run on Visium HD data.")
    outs, given = lay
    bdir = _bin_dir(outs, given, bin_size_um)
    notes = C.Notes()
    if (bdir / S._H5).is_file():
        counts_path = bdir / S._H5
        X, bc, ids, names, ftype = S._read_h5(counts_path)
    elif (bdir / S._MTX).is_dir():
        counts_path = bdir / S._MTX
        X, bc, ids, names, ftype = S._read_mtx(counts_path)
    else:
        raise InputError(bdir / S._H5, f"{bdir.name}/ has no filtered_feature_bc_matrix.h5 (or matrix folder).",
                         f"copy binned_outputs/{bdir.name}/ from Space Ranger outs/ completely.")
    C.check_unique(bc, counts_path)
    ge = ftype == "Gene Expression"
    if not ge.all():
        notes.note(f"kept {int(ge.sum())} Gene Expression features of {len(ge)}")
        X, ids, names = X[:, np.flatnonzero(ge)], ids[ge], names[ge]
    X = C.check_counts(X, counts_path)
    spatial = bdir / "spatial"
    pbc, in_tissue, xy, pos_path, _array_cr = S.read_positions(spatial)
    tissue = in_tissue == 1
    ci, pi = C.join_positions(bc, pbc[tissue], counts_path, pos_path, notes)
    X, bc, coords = X[ci], bc[ci], xy[tissue][pi]
    sf, sf_path = S.read_scalefactors(spatial)
    if not sf:
        sf, sf_path = S.read_scalefactors(outs / "spatial")
    bin_um = float(sf.get("bin_size_um") or int(_BIN_RE.match(bdir.name).group(1)))  # type: ignore[union-attr]

    scale, img_path = 1.0, None
    if image is not None:
        img_path = Path(image)
    else:
        for folder in (spatial, outs / "spatial"):
            for key, name in (("tissue_hires_scalef", "tissue_hires_image.png"),
                              ("tissue_lowres_scalef", "tissue_lowres_image.png")):
                if (folder / name).is_file() and key in sf:
                    img_path, scale = folder / name, float(sf[key])
                    break
            if img_path is not None:
                break
    slide = None
    if img_path is not None:
        slide = open_slide(img_path, scale=scale)
        if scale != 1.0:
            notes.warn(f"{img_path.name}: no full-resolution H&E given; using this image at {scale:g} image px per "
                       "full-res px (reduced detail). Pass image=FULLRES (--image) for full resolution.")
        inside = C.drop_outside_image(coords, slide, img_path, notes)
        X, bc, coords = X[inside], bc[inside], coords[inside]
    else:
        notes.warn(f"{outs}: no image found (no --image and no tissue_hires/lowres PNG); expression only.")

    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    elif sf.get("microns_per_pixel"):
        um, src = float(sf["microns_per_pixel"]), "visium-hd scalefactors (microns_per_pixel)"
    elif sf.get("spot_diameter_fullres") and sf.get("bin_size_um"):
        um = float(sf["bin_size_um"]) / float(sf["spot_diameter_fullres"])
        src = "visium-hd scalefactors (bin_size_um / spot_diameter_fullres)"
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
