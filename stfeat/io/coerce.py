"""One coercion for "a path, a manifest, a SampleRef, a Sample, or a list of them" (:func:`as_samples`).

Every public function that takes samples (:func:`stfeat.extraction.extract`, :func:`stfeat.fitting.fit_report`,
:meth:`stfeat.Model.predict`, ...) goes through here, so all of them accept the same things.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

from stfeat.errors import InputError
from stfeat.io.manifest import SampleRef, resolve_samples
from stfeat.io.sample import Sample


class LoadedRef:
    """An already loaded :class:`Sample` seen through the SampleRef interface (``sample_id``, ``patient``,
    ``path``, ``load()``), so loaded and lazy samples flow through the same code."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.sample_id = sample.sample_id
        self.patient = sample.patient
        p = sample.meta.get("source_path")
        self.path = Path(p) if p else None

    def load(self) -> Sample:
        return self.sample

    def __repr__(self) -> str:
        return f"LoadedRef({self.sample_id!r}, patient={self.patient!r})"


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def as_samples(x: Any, *, lazy: bool = False, **overrides: Any) -> list[Any]:
    """Samples from a path (sample folder or file, folder of samples, manifest), a SampleRef, a Sample,
    or an iterable of these.

    Parameters
    ----------
    x
        What the user gave.
    lazy
        Return references (``sample_id``, ``patient``, ``path``, ``load()``) without reading the data;
        otherwise every sample is read (counts, spot geometry, an image handle).
    **overrides
        :func:`stfeat.io.read_sample` keyword arguments for samples read from paths (e.g. ``um_per_px``).
        ``image`` (the H&E of ONE sample) goes through :func:`with_image`: an error when ``x`` holds several.

    Returns
    -------
    list
        :class:`Sample` objects (``lazy=False``), or SampleRef / :class:`LoadedRef` objects.
    """
    refs: list[Any] = []
    image = overrides.pop("image", None)
    items: Iterable[Any] = [x] if (_is_pathlike(x) or isinstance(x, (Sample, SampleRef))) else x
    for it in items:
        if _is_pathlike(it):
            refs.extend(resolve_samples(it, **{k: v for k, v in overrides.items() if v is not None}))
        elif isinstance(it, Sample):
            refs.append(LoadedRef(it))
        elif isinstance(it, (SampleRef, LoadedRef)):
            refs.append(it)
        else:
            raise TypeError(f"cannot read samples from a {type(it).__name__}; give a path, a manifest, a "
                            "SampleRef or a Sample (or a list of them)")
    if not refs:
        raise InputError(x if _is_pathlike(x) else None, "no samples found.",
                         "give a sample folder, a folder of samples or a manifest.")
    ids = [r.sample_id for r in refs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(x if _is_pathlike(x) else None, f"sample id(s) {dup} appear more than once.",
                         "give every sample a unique sample_id (manifest column 'sample_id').")
    refs = with_image(refs, image, x if _is_pathlike(x) else None)
    if lazy:
        return refs
    return [_load(r) for r in refs]


def with_image(refs: list[Any], image: str | os.PathLike | None, source: Any = None) -> list[Any]:
    """``refs`` with the ``image`` override (``--image`` / config key ``image`` / ``image=``) applied.

    One image is the H&E of one sample: ``image`` must be a file and ``refs`` a single sample read from a
    path (:class:`SampleRef`), else :class:`InputError` naming the image or ``source`` (what the user gave)
    and the ways to give several samples their images. ``image=None`` returns ``refs`` unchanged.
    """
    if image is None:
        return refs
    img = Path(image).expanduser()
    if not img.is_file():
        raise InputError(img, "the image file (--image / image=) does not exist.",
                         "check the path of the H&E image.")
    if len(refs) != 1:
        ids = [r.sample_id for r in refs]
        raise InputError(source, f"--image (image=) is the H&E of one sample, but the input holds {len(refs)} "
                         f"samples ({', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''}).",
                         "give one sample's folder or file (`stfeat info` picks one with --sample-id ID), or "
                         "list the samples in a manifest with an `image` column (one image per row).")
    (ref,) = refs
    if not isinstance(ref, SampleRef):
        raise InputError(source, f"sample {ref.sample_id} is already read, so image= cannot give it another H&E.",
                         "pass the sample's path (or a SampleRef) instead of the loaded Sample, or read it with "
                         "st.read(path, image=...).")
    return [dataclasses.replace(ref, options={**ref.options, "image": img})]


def _load(ref: Any) -> Sample:
    s = ref.load()
    if getattr(ref, "patient", None) not in (None, "") and s.patient != ref.patient:
        s.meta["patient"] = ref.patient
    return s


def read(x: Any, **overrides: Any) -> list[Sample]:
    """Read samples: ``st.read("runs/")`` -> a list of :class:`Sample`.

    ``x`` is a sample folder or file (legacy ST, Space Ranger ``outs/``, HEST-1k root, ``.h5ad``), a folder
    of samples, a manifest (``.csv``/``.yaml``), or a list of these. Keyword arguments go to
    :func:`stfeat.io.read_sample` for every sample (``um_per_px=``, ``image=``, ...).
    """
    return as_samples(x, **overrides)
