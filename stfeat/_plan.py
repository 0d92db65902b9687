"""Stage one's plan for one cache file: new, resume, update or skip (and the shard of the samples a rank takes)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stfeat import cache as C
from stfeat.errors import InputError
from stfeat.identity import _Identity

log = logging.getLogger("stfeat.extraction")


# ---------------------------------------------------------------- samples, shards, plans
def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``(i, n)`` of a shard ``"i/n"`` (0-based) or tuple; None: torchrun's ``RANK``/``WORLD_SIZE`` (else 0/1)."""
    if shard is None:
        ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        return (rank, ws) if ws > 1 else (0, 1)
    if isinstance(shard, str):
        try:
            i_s, n_s = shard.split("/")
            i, n = int(i_s), int(n_s)
        except ValueError:
            raise InputError(None, f"shard must look like 'i/n' (0-based), got {shard!r}.", "give e.g. 0/4.") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise InputError(None, f"shard {i}/{n} is out of range: i is 0-based, 0 <= i < n.", "give e.g. 0/4 .. 3/4.")
    return i, n


@dataclass
class _Plan:
    action: str  # "skip" | "new" | "resume" | "update"
    scales: list[float]  # every scale the finished file will hold
    batch_size: int | None = None
    n_spots: int = 0


def _mismatch(path: Path, attrs: dict, ident: _Identity) -> InputError:
    return InputError(
        path,
        f"was written by another encoder configuration (encoder {attrs.get('encoder')}, weights "
        f"{attrs.get('weights_id')}, config {attrs.get('config_hash')}) than the one requested (encoder "
        f"{ident.name}, weights {ident.weights_id}, config {ident.hash}).",
        "pass --overwrite (overwrite=True) to recompute it, or use another --cache-dir.",
    )


def _plan(final: Path, ident: _Identity, scales: Sequence[float], *, dtype: np.dtype, k: int,
          um_per_px: float | None, overwrite: bool, sample_id: str | None = None, mode: str = "auto") -> _Plan:
    want = sorted(float(s) for s in scales)
    part = C.partial_path(final)
    C.refuse_symlinks(final, part)
    if overwrite:
        return _Plan("new", want)
    for path, is_final in ((final, True), (part, False)):
        if not path.exists():
            continue
        try:
            attrs = C.read_attrs(path)
        except InputError:
            if is_final:
                raise
            log.warning("%s is unreadable (killed mid-write?): starting it again", path)
            return _Plan("new", want)
        C.check_sample_id(path, attrs, sample_id)
        C.verify_attrs(path, attrs)
        if attrs.get("config_hash") != ident.hash:
            raise _mismatch(path, attrs, ident)
        if np.dtype(str(attrs.get("dtype", "float16"))) != dtype:
            raise InputError(path, f"stores features as {attrs.get('dtype')}, not the requested {dtype}.",
                             "pass --overwrite to recompute it, or use another --cache-dir.")
        if um_per_px is not None and abs(float(attrs.get("um_per_px", um_per_px)) - um_per_px) > 1e-9:
            raise InputError(path, f"was extracted at {attrs.get('um_per_px')} um/px, not the requested "
                             f"{um_per_px}.", "pass --overwrite to recompute it, or use another --cache-dir.")
        if mode in ("crop", "dense") and str(attrs.get("extraction_mode", "crop")) != mode:
            raise InputError(path, f"holds {attrs.get('extraction_mode', 'crop')}-mode features, not the requested "
                             f"{mode}-mode ones.", "pass --overwrite to recompute it, or use another --cache-dir.")
        have = sorted(float(s) for s in np.atleast_1d(attrs.get("scales_um", [])))
        allsc = sorted(set(have) | set(want))
        bs = int(attrs["batch_size"]) if attrs.get("batch_size") else None
        if not is_final:
            return _Plan("resume", allsc, bs)
        if not attrs.get("complete", False):
            return _Plan("resume", allsc, bs)
        if set(want) <= set(have) and int(attrs.get("k_neighbors", 0) or 0) == k:
            return _Plan("skip", have, n_spots=int(attrs.get("n_spots", 0)))
        return _Plan("update", allsc, bs)
    return _Plan("new", want)
