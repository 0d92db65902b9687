"""The one data model every reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stfeat import _constants as K

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from stfeat.slide import Slide


@dataclass
class Sample:
    """One ST section: expression, spot geometry and a handle on its H&E image.

    Attributes
    ----------
    adata
        Raw counts in ``X`` (spots x genes, sparse CSR float32 holding integers), barcodes as
        ``obs_names``, spot centres in level-0 pixels as ``obsm["spatial"]`` in (x, y) order,
        provenance in ``uns["stfeat"]`` (sample id, patient, format, um/px and its source,
        image path, warnings).
    slide
        The H&E image (``None`` only for expression-only inputs).
    """

    adata: "AnnData"
    slide: "Slide | None"

    @property
    def meta(self) -> dict[str, Any]:
        return self.adata.uns.setdefault(K.UNS_KEY, {})

    @property
    def sample_id(self) -> str:
        return str(self.meta[K.U_SAMPLE_ID])

    @property
    def patient(self) -> str | None:
        p = self.meta.get(K.U_PATIENT)
        return None if p in (None, "") else str(p)

    @property
    def um_per_px(self) -> float:
        return float(self.meta[K.U_UM_PER_PX])

    @property
    def um_per_px_source(self) -> str:
        return str(self.meta.get(K.U_UM_PER_PX_SOURCE, "unknown"))

    @property
    def format(self) -> str:
        return str(self.meta.get(K.U_FORMAT, "unknown"))

    @property
    def coords(self) -> np.ndarray:
        """Spot centres, level-0 px, (n, 2) float64 in (x, y) order."""
        return np.asarray(self.adata.obsm[K.SPATIAL_KEY], dtype=np.float64)

    @property
    def barcodes(self) -> np.ndarray:
        return np.asarray(self.adata.obs_names, dtype=str)

    @property
    def warnings(self) -> list[str]:
        return list(self.meta.get(K.U_WARNINGS, []))

    @property
    def n_spots(self) -> int:
        return int(self.adata.n_obs)

    def __repr__(self) -> str:
        img = "no image" if self.slide is None else f"image {self.slide.dimensions}"
        return (
            f"Sample({self.sample_id!r}, format={self.format}, patient={self.patient}, "
            f"{self.adata.n_obs} spots x {self.adata.n_vars} genes, {img}, "
            f"{self.meta.get(K.U_UM_PER_PX)} um/px [{self.um_per_px_source}])"
        )
