"""Datasets: generators of synthetic data (like :mod:`sklearn.datasets`).

:func:`make_synthetic_dataset` writes a small multi-patient H&E + spatial transcriptomics dataset
with known morphology-driven expression, in the HEST-1k layout that :func:`stfeat.io.read_sample`
reads; ``stfeat demo`` and the notebooks run on it. Importing this package is light (numpy only);
scipy, anndata and tifffile are imported by the functions that need them.
"""

from __future__ import annotations

from stfeat.datasets._expression import gene_panel, hex_spots, spot_morphology
from stfeat.datasets._tissue import render_section
from stfeat.datasets.synthetic import (
    SYNTHETIC_BANNER,
    SyntheticDataset,
    SyntheticParams,
    default_synthetic_dir,
    is_synthetic,
    make_synthetic_dataset,
    remove_synthetic_dataset,
)

__all__ = [
    "SYNTHETIC_BANNER",
    "SyntheticDataset",
    "SyntheticParams",
    "default_synthetic_dir",
    "gene_panel",
    "hex_spots",
    "is_synthetic",
    "make_synthetic_dataset",
    "remove_synthetic_dataset",
    "render_section",
    "spot_morphology",
]
