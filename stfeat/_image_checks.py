"""Checks on a plain image before and after it is decoded: declared size against file and memory, grey fill."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from stfeat.errors import InputError


def _check_decode_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse to decode an image whose header declares more pixels than the file or the machine can hold.

    A JPEG or PNG cannot compress an RGB image more than about 1000:1 (JPEG's smallest 8 x 8 block
    and deflate's limit), so a header declaring 65,500 x 65,500 px over a few kilobytes is damaged or a
    decompression bomb; and a decode that needs more memory than is available would end in a
    MemoryError (or the OOM killer) after minutes.
    """
    w, h = size
    need = int(w) * int(h) * 3
    file_bytes = max(1, path.stat().st_size)
    if need / file_bytes > _MAX_RATIO:
        raise InputError(path, f"the header declares {w} x {h} px ({need / 1e9:.1f} GB decoded) but the file holds "
                         f"only {file_bytes:,} bytes ({need / file_bytes:,.0f}:1, impossible for a JPEG/PNG): it is "
                         "damaged or a decompression bomb.", "re-export or re-download the image.")
    avail = _available_memory()
    if avail is not None and need > 0.8 * avail:
        raise InputError(path, f"decoding this {w} x {h} px image needs {need / 1e9:.1f} GB of memory, more than the "
                         f"{avail / 1e9:.1f} GB available.", "convert it to a tiled pyramidal TIFF, which is read "
                         "tile by tile (e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`).")


_MAX_RATIO = 5000.0


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), else physical memory, else None."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    return None


def _grey_fill_rows(arr: np.ndarray) -> int:
    """Rows at the bottom that are exactly libjpeg's fill colour (128 grey): what a truncated JPEG decodes to."""
    n = 0
    for y in range(arr.shape[0] - 1, -1, -1):
        if not (arr[y] == 128).all():
            break
        n += 1
    return n
