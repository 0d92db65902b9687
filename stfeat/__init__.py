"""stfeat: spatial transcriptomics from H&E with cached foundation-model features.

Stage one (:func:`stfeat.extract.extract`) runs a pathology encoder over every spot at several
fields of view and caches the embeddings in HDF5 with a FAISS neighbour graph. Stage two
(:func:`stfeat.fit.fit`) trains light heads on the cache with patient-grouped evaluation.

Heavy libraries (torch, faiss, lightgbm) are imported inside the functions that need them,
so ``import stfeat`` and ``stfeat --help`` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

from stfeat.errors import StfeatError, InputError  # noqa: E402

__all__ = ["__version__", "StfeatError", "InputError", "read_sample", "read_manifest", "Sample"]


def __getattr__(name: str):
    # Lazy re-exports keep import time low.
    if name in {"read_sample", "read_manifest", "Sample"}:
        from stfeat import io

        return getattr(io, name)
    raise AttributeError(f"module 'stfeat' has no attribute {name!r}")
