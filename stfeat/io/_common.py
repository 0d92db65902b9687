"""Checks and assembly shared by every reader: counts validation, joins, um/px, the final Sample."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stfeat import _constants as K
from stfeat.errors import InputError
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

MAX_COUNT = 1e9  # UMIs of one gene in one spot; far beyond any real count, well inside float32
IMAGE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".jpg", ".jpeg", ".png")


class StfeatDataWarning(UserWarning):
    """Input that is still usable but not as expected (also recorded in ``uns["stfeat"]["warnings"]``)."""


class Notes:
    """Collects warnings (emitted and stored) and provenance notes while one sample is read."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.provenance: list[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        warnings.warn(msg, StfeatDataWarning, stacklevel=3)

    def note(self, msg: str) -> None:
        self.provenance.append(msg)
        log.info(msg)


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise InputError(path, f"{what} is missing.", fix)
    return path


def check_counts(X: Any, path: Path) -> Any:
    """Validate raw counts (finite, non-negative, whole numbers) and return CSR float32."""
    import scipy.sparse as sp

    m = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    data = np.asarray(m.data)
    if data.dtype.kind not in "biuf":
        raise InputError(path, f"the counts are not numbers (dtype {data.dtype}).", "give a numeric count matrix.")
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(
                path,
                f"the counts hold {int(bad.sum())} NaN or infinite values.",
                "fill or remove them: every spot x gene cell must be a whole number >= 0.",
            )
    if data.size and data.dtype.kind in "iuf" and float(np.max(data)) > MAX_COUNT:
        raise InputError(
            path,
            f"the counts hold {int((data > MAX_COUNT).sum())} values above {MAX_COUNT:.0e} (max {float(np.max(data)):.3g}); "
            "no spot holds that many UMIs of one gene (as float32 such values lose precision or overflow to inf).",
            "give raw UMI counts; check for a column of ids or a corrupted value.",
        )
    if (data < 0).any():
        raise InputError(
            path,
            f"the counts hold {int((data < 0).sum())} negative values (min {data.min():g}).",
            "give raw UMI counts (whole numbers >= 0), not centred or scaled values.",
        )
    if data.dtype.kind == "f":
        frac = data != np.round(data)
        if frac.any():
            raise InputError(
                path,
                f"the counts hold {int(frac.sum())} non-integer values (e.g. {data[frac][0]:g}); "
                "they look normalised, not raw.",
                "give raw UMI counts (e.g. adata.layers['counts'] or adata.raw), which stfeat normalises itself.",
            )
    m = m.astype(np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def check_unique(names: Any, path: Path, what: str = "barcodes") -> None:
    import pandas as pd

    idx = pd.Index(names)
    if not idx.is_unique:
        dup = idx[idx.duplicated()].unique()
        raise InputError(
            path,
            f"{len(dup)} duplicate {what} (e.g. {list(dup[:3])}).",
            f"make the {what} unique: each spot must appear once.",
        )


def join_positions(
    count_ids: np.ndarray, pos_ids: np.ndarray, counts_path: Path, pos_path: Path, notes: Notes, *, warn_counts=True
) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (into counts, into positions) of the spots present in both, in counts order.

    Raises when nothing matches; warns (how many dropped) when only some do.
    """
    import pandas as pd

    pos_index = pd.Index(pos_ids)
    where = pos_index.get_indexer(count_ids)
    keep = np.flatnonzero(where >= 0)
    if keep.size == 0:
        raise InputError(
            counts_path,
            f"the counts and the positions in {pos_path} share no spot ids "
            f"(counts e.g. {list(count_ids[:3])}, positions e.g. {list(pos_ids[:3])}).",
            "check that both files belong to the same sample and use the same barcode/spot naming.",
        )
    n_count_only = len(count_ids) - keep.size
    n_pos_only = len(pos_ids) - keep.size
    if n_count_only and warn_counts:
        notes.warn(
            f"{counts_path.name}: {n_count_only} of {len(count_ids)} spots have counts but no position in "
            f"{pos_path.name}; dropped them."
        )
    if n_pos_only:
        notes.warn(
            f"{pos_path.name}: {n_pos_only} of {len(pos_ids)} spots under tissue have no counts in "
            f"{counts_path.name}; dropped them."
        )
    return keep, where[keep]


def lattice_um_per_px(coords: np.ndarray, pitch_um: float) -> tuple[float, float]:
    """um/px from the median nearest-neighbour distance of a spot lattice, and that distance in px."""
    from scipy.spatial import cKDTree

    if len(coords) < 3:
        return float("nan"), float("nan")
    d, _ = cKDTree(coords).query(coords, k=2)
    nn = float(np.median(d[:, 1]))
    return (pitch_um / nn if nn > 0 else float("nan")), nn


def estimated_source(tech: str, pitch_um: float, nn_px: float) -> str:
    return f"spot-lattice (estimated: {tech} pitch {pitch_um:g} um / median neighbour distance {nn_px:.1f} px)"


def no_um_error(path: Path, why: str) -> InputError:
    return InputError(
        path,
        f"the micrometres per pixel of this sample is unknown ({why}).",
        "give it: read_sample(..., um_per_px=VALUE) or `--um-per-px VALUE` (or an um_per_px column in a manifest).",
    )


def drop_outside_image(
    coords: np.ndarray, slide: Any, image_path: Path, notes: Notes
) -> np.ndarray:
    """Boolean mask of spots whose centre lies inside the image; warn if some are not, raise if none are."""
    if slide is None:
        return np.ones(len(coords), dtype=bool)
    w, h = slide.dimensions
    inside = (coords[:, 0] >= 0) & (coords[:, 1] >= 0) & (coords[:, 0] < w) & (coords[:, 1] < h)
    n_out = int((~inside).sum())
    if n_out == len(coords):
        raise InputError(
            image_path,
            f"all {len(coords)} spot centres lie outside the image ({w} x {h} coordinate px; spots span "
            f"x {coords[:, 0].min():.0f}..{coords[:, 0].max():.0f}, y {coords[:, 1].min():.0f}..{coords[:, 1].max():.0f}).",
            "check that the image belongs to the sample and is at the resolution of the coordinates "
            "(a downsampled image needs its scale factor).",
        )
    if n_out:
        notes.warn(f"{image_path.name}: {n_out} of {len(coords)} spot centres lie outside the image; dropped them.")
    return inside


def build_sample(
    *,
    X: Any,
    barcodes: Any,
    genes: Any,
    coords: np.ndarray,
    slide: Any,
    sample_id: str,
    patient: str | None,
    fmt: str,
    um_per_px: float,
    um_source: str,
    source_path: Path,
    notes: Notes,
    var: Any = None,
    obs: Any = None,
    extra: dict[str, Any] | None = None,
) -> Sample:
    """Assemble the AnnData + Slide every reader returns (X already checked by :func:`check_counts`)."""
    import anndata as ad
    import pandas as pd

    genes = pd.Index(np.asarray(genes, dtype=str))
    if not genes.is_unique:
        genes = pd.Index(_make_unique(list(genes)))
    obs_df = pd.DataFrame(index=pd.Index(np.asarray(barcodes, dtype=str), name=None)) if obs is None else obs
    obs_df.index = obs_df.index.astype(str)
    var_df = pd.DataFrame(index=genes) if var is None else var.set_axis(genes, axis=0)
    adata = ad.AnnData(X=X, obs=obs_df, var=var_df)
    adata.obsm[K.SPATIAL_KEY] = np.asarray(coords, dtype=np.float64)
    meta: dict[str, Any] = {
        K.U_SAMPLE_ID: str(sample_id),
        K.U_PATIENT: "" if patient is None else str(patient),
        K.U_FORMAT: fmt,
        K.U_UM_PER_PX: float(um_per_px),
        K.U_UM_PER_PX_SOURCE: um_source,
        K.U_IMAGE_PATH: "" if slide is None else str(slide.path),
        K.U_IMAGE_SCALE: 1.0 if slide is None else float(slide.scale),
        K.U_SOURCE_PATH: str(source_path),
        K.U_WARNINGS: list(notes.warnings),
        "provenance": list(notes.provenance),
    }
    if extra:
        meta.update(extra)
    adata.uns[K.UNS_KEY] = meta
    return Sample(adata=adata, slide=slide)


def _make_unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}-{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def find_image(folder: Path, stem: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        for cand in (folder / f"{stem}{suf}", folder / f"{stem}{suf.upper()}"):
            if cand.is_file():
                return cand
    return None
