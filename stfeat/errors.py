"""Error types. Every user-facing error names the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class StfeatError(Exception):
    """Base class of stfeat's user-facing errors (the CLI prints them without a traceback)."""


class InputError(StfeatError, ValueError):
    """Bad input: a file that is missing, malformed or inconsistent.

    Parameters
    ----------
    path
        The file or folder at fault (``None`` when no single file is).
    problem
        What is wrong, in one sentence.
    fix
        What the user should do about it.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{_printable(self.path)}: " if self.path is not None else ""
        super().__init__(f"{where}{_printable(problem)} Fix: {_printable(fix)}")

    def __reduce__(self):  # picklable (DataLoader workers hand it to the main process intact)
        return (type(self), (self.path, self.problem, self.fix))


def _printable(v: object) -> str:
    """``str(v)`` that any terminal can print: bytes of a name that is not UTF-8 become U+FFFD."""
    return str(v).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class CacheLockedError(StfeatError):
    """Another process holds the lock of a feature cache file."""


class ResourceError(StfeatError):
    """The machine ran out of something (disk, a file-size limit, shared memory, a worker process).

    Parameters are those of :class:`InputError`: the file or folder concerned, the problem, the fix.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{_printable(self.path)}: " if self.path is not None else ""
        super().__init__(f"{where}{_printable(problem)} Fix: {_printable(fix)}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.problem, self.fix))
