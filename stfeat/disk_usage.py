"""What stfeat holds on disk: the decoded-slide cache and the feature caches (``stfeat cache du/clean``)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from stfeat.cache import LOCK_SUFFIX, PARTIAL_SUFFIX


@dataclass
class FeatureUsage:
    """Feature caches under one root: complete files and bytes per encoder folder, partial and lock files."""

    root: Path
    encoders: dict[str, tuple[int, int]] = field(default_factory=dict)
    partial: list[Path] = field(default_factory=list)
    partial_bytes: int = 0
    locks: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.encoders.values()) + self.partial_bytes


def feature_usage(root: str | Path) -> FeatureUsage:
    root = Path(root)
    u = FeatureUsage(root=root)
    if not root.is_dir():
        return u
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        n = b = 0
        for f in d.iterdir():
            if f.is_symlink() or not f.is_file():
                continue
            if f.name.endswith(".h5"):
                n, b = n + 1, b + f.stat().st_size
            elif f.name.endswith(".h5" + PARTIAL_SUFFIX):
                u.partial.append(f)
                u.partial_bytes += f.stat().st_size
            elif f.name.endswith(LOCK_SUFFIX):
                u.locks.append(f)
        if n:
            u.encoders[d.name] = (n, b)
    return u


def _locked(lock: Path) -> bool:
    """True when a live process holds this lock file."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_features(root: str | Path, *, partial: bool) -> int:
    """Remove lock files nobody holds and, with ``partial``, unfinished caches nobody writes. Returns bytes freed."""
    u = feature_usage(root)
    freed = 0
    for lock in u.locks:
        if not _locked(lock):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    if partial:
        for p in u.partial:
            final = p.with_name(p.name[: -len(PARTIAL_SUFFIX)])
            if _locked(final.with_name(final.name + LOCK_SUFFIX)):
                continue
            with contextlib.suppress(FileNotFoundError):
                size = p.stat().st_size
                p.unlink()
                freed += size
    return freed


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
