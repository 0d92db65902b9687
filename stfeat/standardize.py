"""Per-slide feature standardisation (``standardize="slide"``), the domain correction for transfer across
patients and staining batches.

Before anything else, each scale's features of a sample are centred and scaled with that sample's OWN mean
and standard deviation over its spots (population std, float64; a feature constant on the sample, within
rounding, keeps scale 1, so it becomes 0). Flat inputs, the neighbours' mean and the tokens are built from
the standardised features, so each scale of ``FeatureSet.flat()`` has mean 0 and std 1 per sample. A fitted
:class:`stfeat.Model` records the mode in its layout and applies it to a new sample with the new sample's own
statistics (``SampleFeatures.standardize_stats`` overrides them: grid predictions use the measured spots').

Samples held in memory are standardised whole in float64 (``SampleFeatures.standardized``); a lazy sample's
statistics come from one streaming pass (``stfeat.heads._base.standardize_fit`` on its row view), and its
row chunks and token chunks are standardised in float32 as they are read (:func:`apply_inplace`), so ridge
from sufficient statistics, the chunked mlp and attention fits and streamed prediction all see the same
inputs as the in-memory path (to float32 rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stfeat.errors import InputError

#: values of ``standardize``: ``none`` (features as cached) or ``slide`` (per-sample centring and scaling)
STANDARDIZE = ("none", "slide")


def check_standardize(mode: Any) -> str:
    """``mode`` if it is one of :data:`STANDARDIZE`, else an InputError naming them."""
    if mode not in STANDARDIZE:
        raise InputError(None, f"standardize={mode!r} is not a per-slide standardisation mode.",
                         f"use one of: {', '.join(STANDARDIZE)}.")
    return str(mode)


def apply_inplace(block: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> None:
    """``block = (block - mean) / std`` in float32, in place (a chunk of one scale's columns)."""
    block -= np.asarray(stats[0], np.float32)
    block /= np.asarray(stats[1], np.float32)


__all__ = ["STANDARDIZE", "check_standardize", "apply_inplace"]
