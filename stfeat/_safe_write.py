"""Writing outputs safely: a fresh temporary file we created ourselves, renamed into place, never a link followed.

``path.with_name(name + ".tmp").write_text(...)`` follows a planted ``metrics.json.tmp`` symlink and
truncates its target (e.g. ``~/.bashrc``). Here the temporary file is created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` under a unique name, written through its descriptor, then renamed
over the target (``os.replace`` replaces a link at the target, it does not write through it). With
``root``, a target whose folder resolves outside ``root`` (a linked sub-folder) is refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from stfeat.errors import InputError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def check_inside(path: str | Path, root: str | Path) -> Path:
    """``path``, refused (InputError) when its folder resolves outside ``root`` through a symbolic link."""
    p, r = Path(path), Path(root).resolve()
    parent = p.parent.resolve()
    if parent != r and r not in parent.parents:
        raise InputError(p, f"writing here would leave the output folder {r} (the folder resolves to {parent} "
                         "through a symbolic link).", "remove the link, or choose another output folder.")
    return p


def fresh_tmp(path: str | Path) -> tuple[Path, int]:
    """A new temporary file beside ``path`` (created by us, never a link) and its open descriptor."""
    p = Path(path)
    for _ in range(100):
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, _FLAGS, 0o644)
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file beside {p}")


def tmp_path(path: str | Path) -> Path:
    """A fresh, empty temporary file beside ``path`` for writers that open by name (h5py, matplotlib)."""
    tmp, fd = fresh_tmp(path)
    os.close(fd)
    return tmp


def write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (fresh temporary file, fsync, rename)."""
    p = Path(path) if root is None else check_inside(path, root)
    tmp, fd = fresh_tmp(p)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return p


def write_text(path: str | Path, text: str, *, root: str | Path | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), root=root)


def replace_into(tmp: str | Path, path: str | Path, *, root: str | Path | None = None) -> Path:
    """Rename a finished temporary file over ``path`` (checked inside ``root`` when given)."""
    p = Path(path) if root is None else check_inside(path, root)
    os.replace(tmp, p)
    return p


__all__ = ["write_text", "write_bytes", "tmp_path", "replace_into", "check_inside", "fresh_tmp"]
