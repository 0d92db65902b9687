"""The scverse spatial convention for stfeat's AnnData: ``uns["spatial"][library_id]``.

scanpy's ``sc.pl.spatial`` and squidpy read, per library id, downsampled H&E images and their scale
factors (image px per ``obsm["spatial"]`` px) plus the spot diameter in ``obsm["spatial"]`` px::

    uns["spatial"][sample_id] = {
        "images": {"hires": uint8 (h, w, 3), "lowres": uint8 (h', w', 3)},
        "scalefactors": {"tissue_hires_scalef": s_h, "tissue_lowres_scalef": s_l, "spot_diameter_fullres": d},
        "metadata": {"source_image_path": ..., "um_per_px": ..., "spot_diameter_um": ...},
    }

stfeat's ``obsm["spatial"]`` is in level-0 (full-resolution) pixels, which is exactly the frame
Space Ranger's scale factors refer to, so a prediction plots over its H&E as it is.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from stfeat import _constants as K

HIRES_PX = 2000  # Space Ranger's hires image is 2000 px on its long side; lowres 600 px
LOWRES_PX = 600
# spot (or bin / cell) diameter per format, micrometres, when the sample does not say
SPOT_DIAMETER_UM = {"legacy-st": K.LEGACY_ST_SPOT_DIAMETER_UM, "spaceranger": K.VISIUM_SPOT_DIAMETER_UM,
                    "hest": K.VISIUM_SPOT_DIAMETER_UM}


def spot_diameter_um(sample: Any, coords_px: np.ndarray | None = None) -> float:
    """The sample's spot diameter in micrometres: what the reader recorded (bins: the bin size), the
    assay's (legacy ST 100 um, Visium 55 um), else the median nearest-neighbour spacing (cells, grids)."""
    meta = sample.meta
    if meta.get("spot_diameter_um"):
        return float(meta["spot_diameter_um"])
    if sample.format in SPOT_DIAMETER_UM:
        return float(SPOT_DIAMETER_UM[sample.format])
    from stfeat.dense import median_spacing_um

    c = sample.coords if coords_px is None else np.asarray(coords_px, dtype=np.float64)
    sp = median_spacing_um(c * sample.um_per_px)
    return float(sp) if np.isfinite(sp) else 10.0


def spatial_uns(sample: Any, *, library_id: str | None = None, spot_diameter_um: float | None = None,
                coords_px: np.ndarray | None = None, hires_px: int = HIRES_PX, lowres_px: int = LOWRES_PX,
                ) -> dict[str, Any]:
    """``{library_id: {"images", "scalefactors", "metadata"}}`` for ``adata.uns["spatial"]``.

    Parameters
    ----------
    sample
        A :class:`stfeat.io.Sample` (its slide gives the images; without one, no images).
    library_id
        Default the sample id (use it as ``library_id=`` in ``sc.pl.spatial`` when several are stored).
    spot_diameter_um
        Diameter of the plotted spots (default :func:`spot_diameter_um`; for a prediction grid, its step).
    coords_px
        The points that will be plotted, when not the sample's own spots (used only for the default
        diameter of cells and grids).

    Examples
    --------
    >>> pred.uns["spatial"] = spatial_uns(sample)          # doctest: +SKIP
    >>> sc.pl.spatial(pred, color="ERBB2")                   # doctest: +SKIP
    """
    lib = str(library_id or sample.sample_id)
    diam_um = float(spot_diameter_um) if spot_diameter_um is not None else spot_diameter_um_of(sample, coords_px)
    entry: dict[str, Any] = {
        "images": {},
        "scalefactors": {"spot_diameter_fullres": diam_um / float(sample.um_per_px)},
        "metadata": {"source_image_path": str(getattr(sample.slide, "path", "") or ""),
                     "um_per_px": float(sample.um_per_px), "spot_diameter_um": diam_um,
                     "stfeat_format": sample.format},
    }
    if sample.slide is not None:
        for key, px in (("hires", hires_px), ("lowres", lowres_px)):
            rgb, scale = _thumbnail(sample.slide, int(px))
            entry["images"][key] = rgb
            entry["scalefactors"][f"tissue_{key}_scalef"] = scale
    return {lib: entry}


# Thumbnails per open slide: cross-validation builds one prediction AnnData per sample and head, and they
# share the (read-only) images rather than decoding and holding a copy each.
_THUMBS: "weakref.WeakKeyDictionary[Any, dict[int, tuple[np.ndarray, float]]]" = weakref.WeakKeyDictionary()


def _thumbnail(slide: Any, px: int) -> tuple[np.ndarray, float]:
    try:
        per = _THUMBS.setdefault(slide, {})
    except TypeError:  # not weak-referenceable or not hashable: no cache
        per = {}
    if px not in per:
        rgb, scale = slide.thumbnail(px)
        img = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., :3])
        img.flags.writeable = False
        per[px] = (img, float(scale))
    return per[px]


spot_diameter_um_of = spot_diameter_um  # the keyword argument of spatial_uns shadows the function's name

__all__ = ["spatial_uns", "spot_diameter_um"]
