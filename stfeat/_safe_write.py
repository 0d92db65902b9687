"""Writing outputs safely: a fresh temporary file we created ourselves, renamed into place, never a link followed.

``path.with_name(name + ".tmp").write_text(...)`` follows a planted ``metrics.json.tmp`` symlink and
truncates its target (e.g. ``~/.bashrc``). Here the temporary file is created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` under a unique name, written through its descriptor, then renamed
over the target (``os.replace`` replaces a link at the target, it does not write through it). With
``root``, a target whose folder resolves outside ``root`` (a linked sub-folder) is refused.

:func:`atomic_path` is the one implementation of an atomic write: it yields a fresh temporary file (or
folder) of ours beside the target, for writers that open by name (h5py, anndata, safetensors, tifffile),
renames it over the target when the block ends, and removes it when the block raises (nothing
half-written is left under the target's name). :func:`write_bytes` / :func:`write_text` use it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from stfeat.errors import InputError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# ".{name}.{pid}.{8 hex}.tmp": the temporary names made here (see public_path)
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{6}))?\.[0-9a-f]{8}\.tmp$")
#: a temporary of another host (shared file systems) is only taken for stale after this long
STALE_SECONDS = 24 * 3600


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
        tmp = _tmp_name(p)
        try:
            return tmp, os.open(tmp, _FLAGS, 0o644)
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file beside {p}")


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """A short tag of this machine's name (temporaries of another host are not judged by their pid)."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _tmp_name(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}-{_host()}.{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(path: str | Path) -> int:
    """Remove the temporaries of ``path`` that dead writers left (a run killed with kill -9): those of a
    process of this host that no longer runs, or of any host after :data:`STALE_SECONDS`. Returns how many."""
    import time

    p = Path(path)
    n = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for e in os.scandir(p.parent):
            m = _TMP_RE.match(e.name)
            if m is None or m.group("name") != p.name or int(m.group("pid")) == os.getpid():
                continue
            try:
                age = time.time() - e.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            here = m.group("host") == _host()
            if (here and not _alive(int(m.group("pid")))) or age > STALE_SECONDS:
                _remove(Path(e.path))
                n += 1
    return n


def fresh_tmp_dir(path: str | Path) -> Path:
    """A new, empty temporary folder beside ``path`` (``mkdir`` fails on anything already there, a link too)."""
    p = Path(path)
    for _ in range(100):
        tmp = _tmp_name(p)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary folder beside {p}")


def public_path(path: str | Path) -> Path:
    """``path`` with each temporary component made here replaced by the name it is renamed to (for messages)."""
    parts = [(m.group("name") if (m := _TMP_RE.match(part)) else part) for part in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def _remove(p: Path) -> None:
    """Remove a file, link or folder of ours (a link is removed, never followed); errors are ignored."""
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()


def swap_in(tmp: str | Path, path: str | Path) -> Path:
    """Rename the finished ``tmp`` (file or folder) over ``path``.

    A file or link at ``path`` is replaced, never written through. A folder there (a previous output) is
    first renamed aside to a fresh name, then removed once ``tmp`` is in place: ``path`` never holds a mix
    of the two (killed in between, ``path`` is absent and both stay under hidden temporary names).
    """
    tmp, p = Path(tmp), Path(path)
    if not tmp.is_dir() or tmp.is_symlink() or not os.path.lexists(p):
        os.replace(tmp, p)
        return p
    if p.is_symlink():
        p.unlink()  # a folder cannot replace a link in one rename; the link is removed, never followed
        os.replace(tmp, p)
        return p
    if not p.is_dir():
        raise InputError(p, "exists and is not a folder; stfeat will not replace a file with a folder.",
                         "remove the file or choose another output path.")
    aside = fresh_tmp_dir(p)
    os.replace(p, aside)  # a folder replaces the empty folder we just made
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(aside, p)  # put the previous output back
        raise
    _remove(aside)
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path, *, root: str | Path | None = None, folder: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: the one way stfeat writes a file or folder in place.

    Yields a fresh temporary file (``folder=True``: an empty folder) beside ``path``, created by us under
    an unguessable name (a planted link is never followed); when the block ends it is renamed over
    ``path`` (:func:`swap_in`), when the block raises it is removed. With ``root``, a ``path`` whose folder
    resolves outside ``root`` is refused.
    """
    p = Path(path) if root is None else check_inside(path, root)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(p)  # what a killed earlier run left beside it: the disk does not fill
    if folder:
        tmp = fresh_tmp_dir(p)
    else:
        tmp, fd = fresh_tmp(p)
        os.close(fd)
    try:
        yield tmp
        swap_in(tmp, p)
    except BaseException:
        _remove(tmp)
        raise


def tmp_path(path: str | Path) -> Path:
    """A fresh, empty temporary file beside ``path`` for writers that open by name (h5py, matplotlib)."""
    tmp, fd = fresh_tmp(path)
    os.close(fd)
    return tmp


def write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (fresh temporary file, fsync, rename)."""
    with atomic_path(path, root=root) as tmp:
        # our own fresh file, reopened without following links
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | Path, text: str, *, root: str | Path | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), root=root)


def replace_into(tmp: str | Path, path: str | Path, *, root: str | Path | None = None) -> Path:
    """Rename a finished temporary file over ``path`` (checked inside ``root`` when given)."""
    p = Path(path) if root is None else check_inside(path, root)
    os.replace(tmp, p)
    return p


__all__ = ["atomic_path", "write_text", "write_bytes", "tmp_path", "replace_into", "swap_in", "check_inside",
           "fresh_tmp", "fresh_tmp_dir", "public_path", "remove_stale"]
