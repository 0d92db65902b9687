"""Readers: every supported layout becomes one :class:`Sample` (AnnData + Slide).

>>> from stfeat.io import read_sample, resolve_samples
>>> refs = resolve_samples("../shared/data/her2st")      # 5 refs, C2..C6, patient "C"
>>> sample = refs[0].load()
"""

from __future__ import annotations

from stfeat.io.coerce import LoadedRef, as_samples, read, with_image
from stfeat.io.manifest import SampleRef, read_manifest, resolve_samples
from stfeat.io.detect import FORMATS, detect_format, read_sample
from stfeat.io.sample import Sample

__all__ = ["FORMATS", "LoadedRef", "Sample", "SampleRef", "as_samples", "read", "detect_format", "read_manifest", "read_sample", "resolve_samples", "with_image"]
