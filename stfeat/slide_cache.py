"""The decoded-slide cache: raw pixel levels of JPEG/PNG slides, private to the user, under a size cap.

Where: ``$STFEAT_SLIDE_CACHE`` if set, else ``$XDG_CACHE_HOME/stfeat/slides`` (``~/.cache/stfeat/slides``).
The folder is created ``0700`` and must be owned by the user (a folder of someone else's, or a
symbolic link, is refused), so nobody else can plant pixels in it.

Each level is one file ``{key}.L{level}.{w}x{h}.u8``: a 4096-byte header (magic + JSON naming the
source file's resolved path, mtime, size, a digest of its first 64 KiB, the level and its size), then
``h * w * 3`` bytes of RGB, memory-mapped read-only by every process that crops from it. A file whose
header does not match the source it is opened for, or whose size is wrong, is discarded and rebuilt.

Size cap: ``$STFEAT_SLIDE_CACHE_MAX`` (bytes, or ``"4GB"``, ``"500MB"``; default 4 GB). After each
new level, the least recently used files of other slides are removed until the cache fits (using a
file refreshes its mtime). A level file removed while another process maps it stays valid for that
process (POSIX unlink). Temporary files of writers that died (same host, dead pid, or over a day old)
are removed. ``stfeat cache du`` / ``stfeat cache clean`` show and free the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from stfeat.errors import InputError

log = logging.getLogger(__name__)

ENV_DIR = "STFEAT_SLIDE_CACHE"
ENV_MAX = "STFEAT_SLIDE_CACHE_MAX"
DEFAULT_MAX_BYTES = 4 * 1024**3
HEADER_BYTES = 4096
MAGIC = b"STFEAT-SLIDE-LEVEL 1\n"
SUFFIX = ".u8"
_TMP_RE = re.compile(r"\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<tid>\d+)\.tmp$")
_STALE_TMP_S = 24 * 3600
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
          "t": 1024**4, "tb": 1024**4}


def parse_size(text: str | int | float) -> int:
    """``"4GB"`` -> 4 * 1024**3; plain numbers are bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (give bytes, or e.g. 4GB, 500MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def max_bytes() -> int:
    v = os.environ.get(ENV_MAX)
    if not v:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(v)
    except ValueError as exc:
        raise InputError(None, f"${ENV_MAX}={v!r}: {exc}.", f"set {ENV_MAX} to e.g. 4GB, or unset it.") from None


def default_root() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stfeat" / "slides"


def cache_dir() -> Path:
    """The slide cache folder, created private (0700) and checked to be the user's own."""
    root = default_root()
    if not root.exists() and not root.is_symlink():
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _ensure_private(root)
    return root


def _ensure_private(root: Path) -> None:
    st = os.lstat(root)
    fix = f"set {ENV_DIR} to a folder of your own (it is created private), or remove {root}."
    if stat.S_ISLNK(st.st_mode):
        raise InputError(root, "the decoded-slide cache folder is a symbolic link; another user could redirect it.", fix)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(root, "the decoded-slide cache path is not a folder.", fix)
    if st.st_uid != os.getuid():
        raise InputError(root, f"the decoded-slide cache folder belongs to another user (uid {st.st_uid}): pixels "
                         "planted there would be used as the slide's.", fix)
    if st.st_mode & 0o077:
        os.chmod(root, 0o700)


# ------------------------------------------------------------------------------------- identity
def source_identity(path: Path) -> dict:
    """What identifies a source image: resolved path, mtime, size and a digest of its first 64 KiB."""
    p = Path(path).resolve()
    st = p.stat()
    with open(p, "rb") as fh:
        head = hashlib.sha256(fh.read(65536)).hexdigest()[:32]
    return {"source": str(p), "mtime_ns": st.st_mtime_ns, "size": st.st_size, "head": head}


def entry_key(ident: dict) -> str:
    raw = f"{ident['source']}|{ident['mtime_ns']}|{ident['size']}".encode("utf-8", "surrogateescape")
    return hashlib.sha1(raw).hexdigest()[:20]


def entry_name(key: str, level: int, w: int, h: int) -> str:
    return f"{key}.L{level}.{w}x{h}{SUFFIX}"


def _header(ident: dict, level: int, w: int, h: int) -> bytes:
    meta = json.dumps({**ident, "level": level, "w": w, "h": h}, sort_keys=True).encode("utf-8", "surrogateescape")
    blob = MAGIC + meta + b"\n"
    if len(blob) > HEADER_BYTES:
        raise ValueError("slide cache header too long")
    return blob.ljust(HEADER_BYTES, b"\0")


def valid_entry(f: Path, ident: dict, level: int, w: int, h: int) -> bool:
    """True when ``f`` is a regular file of ours, of the right size, whose header names this source and level."""
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size != HEADER_BYTES + w * h * 3:
            return False
        head = os.pread(fd, HEADER_BYTES, 0)
    finally:
        os.close(fd)
    return head == _header(ident, level, w, h)


def write_entry(f: Path, ident: dict, level: int, arr) -> None:
    """Write a level (``(h, w, 3)`` uint8) under a temporary name, then rename it into place."""
    import numpy as np

    h, w = arr.shape[:2]
    tmp = f.with_name(f"{f.name}.{_host()}.{os.getpid()}.{_tid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.pwrite(fd, _header(ident, level, w, h), 0)
        os.ftruncate(fd, HEADER_BYTES + w * h * 3)
    finally:
        os.close(fd)
    try:
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=HEADER_BYTES, shape=(h, w, 3))
        mm[:] = arr
        mm.flush()
        del mm
        os.replace(tmp, f)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def open_entry(f: Path, w: int, h: int):
    import numpy as np

    with contextlib.suppress(OSError):
        os.utime(f)  # least recently used = oldest mtime
    return np.memmap(f, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=(h, w, 3))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _tid() -> int:
    import threading

    return threading.get_ident()


# ------------------------------------------------------------------------------------- size cap
@dataclass
class Usage:
    root: Path
    files: int
    slides: int
    bytes: int
    tmp_files: int
    tmp_bytes: int
    cap_bytes: int


def _entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(root):
            if e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    out.append((Path(e.path), e.stat(follow_symlinks=False)))
    return out


def _tmps(root: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(root):
            if e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    out.append((Path(e.path), e.stat(follow_symlinks=False)))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(root: Path | None = None) -> int:
    """Remove temporary files of dead writers (this host, dead pid; or any over a day old). Returns bytes freed."""
    root = cache_dir() if root is None else root
    freed, now, host = 0, time.time(), _host()
    for p, st in _tmps(root):
        m = _TMP_RE.search(p.name)
        dead = m is not None and m.group("host") == host and not _alive(int(m.group("pid")))
        if dead or now - st.st_mtime > _STALE_TMP_S:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                freed += st.st_size
                log.info("removed %s, left by a writer that died", p.name)
    return freed


def usage(root: Path | None = None) -> Usage:
    root = cache_dir() if root is None else root
    ents, tmps = _entries(root), _tmps(root)
    return Usage(root=root, files=len(ents), slides=len({p.name.split(".", 1)[0] for p, _ in ents}),
                 bytes=sum(st.st_size for _, st in ents), tmp_files=len(tmps),
                 tmp_bytes=sum(st.st_size for _, st in tmps), cap_bytes=max_bytes())


def evict(limit: int | None = None, *, keep: Iterable[str] = (), root: Path | None = None) -> int:
    """Remove least recently used level files until the cache holds at most ``limit`` bytes.

    Files whose key is in ``keep`` (the slide being read) are never removed. Returns bytes freed.
    """
    root = cache_dir() if root is None else root
    limit = max_bytes() if limit is None else int(limit)
    keep = set(keep)
    freed = remove_stale_tmp(root)
    ents = sorted(_entries(root), key=lambda e: e[1].st_mtime)
    total = sum(st.st_size for _, st in ents)
    for p, st in ents:
        if total <= limit:
            break
        if p.name.split(".", 1)[0] in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            freed += st.st_size
            log.info("slide cache over its cap (%d bytes): removed %s", limit, p.name)
        total -= st.st_size
    if total > limit:
        log.warning("the decoded slide being read (%.2f GB) is larger than the slide cache cap (%.2f GB, $%s)",
                    total / 1e9, limit / 1e9, ENV_MAX)
    return freed


def clean(root: Path | None = None) -> int:
    """Remove every level file and temporary file; returns bytes freed."""
    root = cache_dir() if root is None else root
    return evict(0, root=root)


__all__ = ["cache_dir", "usage", "evict", "clean", "remove_stale_tmp", "max_bytes", "parse_size", "Usage"]
