"""The OS lock of a cache file (re-exported by :mod:`stfeat.cache`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from stfeat.cache import lock_path
from stfeat.errors import CacheLockedError, InputError


@contextlib.contextmanager
def cache_lock(path: str | Path) -> Iterator[Path]:
    """Hold the OS lock of a cache file (non-blocking) for the duration of the ``with`` block.

    The lock file is opened without following links (``O_NOFOLLOW``) and must be a plain file with
    one link, so a planted ``C2.h5.lock`` symlink or hard link in a shared, group-writable cache folder
    cannot make stfeat truncate another file. It is removed when the block ends (no ``.lock`` is left
    beside a finished cache); a lock taken on a file that another process removed meanwhile is retried.

    Raises
    ------
    CacheLockedError
        When another process (or another open handle) holds it. A lock held by a process that
        died is released by the OS, so it never blocks forever.
    InputError
        When the lock path is a symbolic link, a hard link or not a regular file.
    """
    import fcntl

    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        fd = _open_lock(lp)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                who = f" (pid {holder})" if holder else ""
                raise CacheLockedError(
                    f"{path}: another stfeat process{who} is writing this cache file. Wait for it to "
                    "finish, or use another --cache-dir. (A lock of a process that died is released "
                    "automatically.)"
                ) from None
            try:  # the holder before us may have removed the file after we opened it: lock the live one
                same = os.path.samestat(os.fstat(fd), os.lstat(lp))
            except FileNotFoundError:
                same = False
            if not same:
                fcntl.flock(fd, fcntl.LOCK_UN)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield lp
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(lp)  # while still holding it: a waiting process then sees a new file
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)
    raise CacheLockedError(f"{path}: its lock file keeps changing under this process; another stfeat process "
                           "is busy with it. Try again, or use another --cache-dir.")


def _open_lock(lp: Path) -> int:
    import errno
    import stat as _stat

    fix = "remove it (stfeat creates its own lock files), and check who can write to the cache folder."
    try:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or lp.is_symlink():
            raise InputError(lp, "the cache lock file is a symbolic link; stfeat does not follow it (it would "
                             "truncate the link's target).", fix) from None
        raise
    st = os.fstat(fd)
    if not _stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise InputError(lp, "the cache lock file is not a plain file of its own (a hard link or a device); "
                         "stfeat does not write to it.", fix)
    return fd


