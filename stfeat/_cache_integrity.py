"""Integrity checks of feature caches (re-exported by :mod:`stfeat.cache`).

* the stored sample id must be the sample a file is read for (:func:`check_sample_id`);
* the ``config_hash`` must be the hash of the stored encoder identity, and caches that carry the old
  Visium pixel size (55 um / spot_diameter_fullres) are refused (:func:`verify_attrs`);
* each feature dataset and the coordinates carry a blake2b checksum written at completion and
  verified on every read (:func:`write_checksums`, :func:`checksum`);
* caches combined in one fit agree on the encoder configuration, and use the scales all of them hold
  (:func:`check_compatible`);
* cache files are never written through symbolic links (:func:`refuse_symlinks`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stfeat.cache import config_hash, scale_name
from stfeat.errors import InputError

log = logging.getLogger("stfeat.cache")


def _as_name(s: float | str) -> str:
    return scale_name(float(s))


def refuse_symlinks(*paths: str | Path) -> None:
    """Refuse cache files that are symbolic links: writing would follow them out of the cache folder."""
    for p in paths:
        if Path(p).is_symlink():
            raise InputError(p, f"is a symbolic link (to {os.readlink(p)}); stfeat does not write cache files "
                             "through links, which could overwrite a file outside the cache folder.",
                             "remove the link (or use another --cache-dir).")


def check_sample_id(path: str | Path, attrs: Mapping[str, Any], sample_id: str | None) -> None:
    """Refuse a cache whose stored sample id is not the sample it is read for."""
    stored = attrs.get("sample_id")
    if sample_id is None or stored in (None, ""):
        return
    if str(stored) != str(sample_id):
        raise InputError(path, f"holds the features of sample {stored!r}, not of {sample_id!r} (two sample ids "
                         "mapped to one cache file, or the file was copied or renamed).",
                         "re-extract the sample with `stfeat extract ... --overwrite`, or use another --cache-dir.")


CHECKSUM_ATTR = "blake2b"
# the pixel size that Visium caches before stfeat 0.x carried: 55 um / spot_diameter_fullres, 15% too small
_OLD_VISIUM_UM = "55 um spot / spot_diameter_fullres"


def checksum(arr: np.ndarray) -> str:
    """blake2b (16 bytes, hex) of an array's bytes, C order: written beside each dataset at completion."""
    import hashlib

    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _verified(path: Path, ds: Any, name: str) -> np.ndarray:
    arr = ds[...]
    want = ds.attrs.get(CHECKSUM_ATTR)
    if want is not None:
        want = want.decode() if isinstance(want, bytes) else str(want)
        if checksum(arr) != want:
            raise InputError(path, f"the content of {name} does not match the checksum written when the file was "
                             "completed: the file was changed or damaged after extraction.",
                             "re-extract this sample: `stfeat extract ... --overwrite` (or delete the file).")
    return arr


def write_checksums(f: Any) -> None:
    """Store the checksum of coords and of every feature dataset (call when the file is complete)."""
    f["coords"].attrs[CHECKSUM_ATTR] = checksum(f["coords"][...])
    for s in f["features"]:
        ds = f["features"][s]
        ds.attrs[CHECKSUM_ATTR] = checksum(ds[...])


def verify_attrs(path: str | Path, attrs: Mapping[str, Any]) -> None:
    """Refuse a cache whose identity attributes were edited, or that carries the old Visium pixel size.

    The ``config_hash`` must be the hash of the stored ``encoder_identity`` (what the features were
    computed with); a file whose hash was edited to look like another configuration is refused.
    """
    ident = attrs.get("encoder_identity")
    if isinstance(ident, dict) and attrs.get("config_hash"):
        if config_hash(ident) != str(attrs["config_hash"]):
            raise InputError(path, f"its config_hash {attrs['config_hash']} is not the hash of the encoder identity "
                             f"it stores ({config_hash(ident)}): the attributes were edited, so what computed these "
                             "features is unknown.", "re-extract this sample with `stfeat extract ... --overwrite`.")
    src = str(attrs.get("um_per_px_source", ""))
    if _OLD_VISIUM_UM in src:
        raise InputError(path, f"was extracted with the old Visium pixel size ({attrs.get('um_per_px')} um/px from "
                         "55 um / spot_diameter_fullres, about 15% too small: its fields of view are ~15% narrower "
                         "than named), so it cannot be mixed with caches of the corrected pixel size.",
                         "re-extract this sample with `stfeat extract ... --overwrite`.")


def check_compatible(entries: Sequence[tuple[str, Path, Mapping[str, Any]]],
                     scales: Sequence[float | str] | None = None) -> list[str]:
    """Check that caches combined in one fit agree; return the scale names to use.

    Parameters
    ----------
    entries
        ``(sample_id, path, attrs)`` per cache (attrs from :func:`read_attrs`).
    scales
        Requested scales; None: the scales every cache holds (a message names what is left out).

    Raises
    ------
    InputError
        Caches computed with different encoder configurations (encoder, weights, config hash, feature
        width), or no scale held by all of them, or a requested scale that some cache lacks.
    """
    groups: dict[tuple, list[str]] = {}
    for sid, path, attrs in entries:
        verify_attrs(path, attrs)
        key = (str(attrs.get("encoder")), str(attrs.get("weights_id")), str(attrs.get("config_hash")),
               str(attrs.get("embed_dim")))
        groups.setdefault(key, []).append(sid)
    if len(groups) > 1:
        desc = "; ".join(f"{', '.join(ids[:4])}{' ...' if len(ids) > 4 else ''}: encoder {k[0]}, weights {k[1]}, "
                         f"config {k[2]}" for k, ids in groups.items())
        raise InputError(entries[0][1].parent, f"the feature caches were computed with {len(groups)} different "
                         f"encoder configurations ({desc}); features of different encoders or weights cannot be "
                         "combined in one model.", "re-extract the odd samples with the same --encoder/--weights "
                         "(without --random-weights), or fit them separately.")
    have = {sid: {scale_name(x) for x in np.atleast_1d(attrs.get("scales_um", []))} for sid, _, attrs in entries}
    if scales is not None:
        want = [_as_name(x) for x in scales]
        for sid, path, _ in entries:
            miss = [x for x in want if x not in have[sid]]
            if miss:
                raise InputError(path, f"holds no features at scale(s) {miss} um (it has "
                                 f"{sorted(have[sid], key=float)}).", "extract them with `stfeat extract ... "
                                 "--scales`, or choose scales every sample has.")
        return want
    common = set.intersection(*have.values()) if have else set()
    union = set.union(*have.values()) if have else set()
    if not common:
        raise InputError(entries[0][1].parent, "no field of view is held by every feature cache ("
                         + "; ".join(f"{sid}: {sorted(v, key=float)}" for sid, v in have.items()) + ").",
                         "extract a common --scales for every sample.")
    if common != union:
        short = {sid: sorted(union - v, key=float) for sid, v in have.items() if union - v}
        log.warning("using the scales every sample has, %s um; left out %s um (%s lack them). Pass --scales, "
                    "or extract the missing scales, to use them.", sorted(common, key=float),
                    sorted(union - common, key=float), ", ".join(f"{k}: {v}" for k, v in short.items()))
    return sorted(common, key=float)


