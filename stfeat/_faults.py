"""Faults of the machine during extraction, turned into named errors (never a crash, a hang or a raw traceback).

* a write error of the feature cache (disk full, ``ulimit -f``, I/O error) -> :class:`ResourceError`
  naming the file and saying that it resumes from the last batch written;
* a user error inside a DataLoader worker (a corrupt TIFF tile) -> the same :class:`InputError` in the
  main process (torch would re-raise it as a RuntimeError carrying the worker's traceback);
* a worker that dies, or produces nothing for ``$STFEAT_WORKER_TIMEOUT`` seconds (default 600; e.g. it
  failed to write a batch to shared memory, which torch drops while the main process waits forever)
  -> :class:`ResourceError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Iterator

from stfeat.errors import ResourceError, StfeatError

ENV_TIMEOUT = "STFEAT_WORKER_TIMEOUT"
_DISK = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit (ulimit -f) was reached",
         errno.EDQUOT: "the disk quota is exhausted", errno.EIO: "an input/output error occurred"}


def disk_error(path: str | Path, exc: BaseException, *, what: str = "the feature cache",
               fix: str | None = None) -> ResourceError:
    """A :class:`ResourceError` naming ``path`` (as it will be named once renamed into place), the problem
    (disk full, file-size limit, I/O error) and ``fix`` (default: rerun extract, which resumes)."""
    from stfeat._safe_write import public_path

    why = _DISK.get(getattr(exc, "errno", None) or -1)
    text = " ".join(str(exc).split())[:300]
    if why is None:
        low = text.lower()
        why = ("the disk is full" if "no space" in low or "errno = 28" in low else "a file-size limit (ulimit -f) "
               "was reached" if "too large" in low or "errno = 27" in low else "the write failed")
    return ResourceError(public_path(path), f"writing {what} failed: {why} ({type(exc).__name__}: {text}).",
                         fix or "free disk space (or raise the file-size limit) and rerun the same `stfeat extract`: "
                         "the unfinished file resumes from the last batch written.")


FIT_FIX = ("free disk space (or raise the file-size limit: `ulimit -f unlimited`) and rerun `stfeat fit`; the output "
           "folder was left as it was before this run (nothing half-written is kept).")


@contextlib.contextmanager
def named_write_errors(path: str | Path, *, what: str = "an output", fix: str = FIT_FIX,
                       hdf5: bool = False) -> Iterator[None]:
    """Turn a write failure (full disk, file-size limit, I/O error; raw from Python, h5py or safetensors)
    inside the block into :func:`disk_error` naming ``path``; stfeat's own errors and others pass through.

    ``hdf5``: the block writes an HDF5 file (an h5ad) that a library opened and closed itself. HDF5 may crash
    at exit after a failed write, so the failure is recorded in :data:`ABANDONED` and the CLI exits with
    ``os._exit`` right after naming the error.
    """
    try:
        yield
    except StfeatError:
        raise
    except Exception as exc:  # noqa: BLE001 - only write failures are renamed, the rest re-raised as they are
        if is_write_failure(exc):
            if hdf5:
                abandon(_FailedHdf5Write(Path(path)))
            raise disk_error(path, exc, what=what, fix=fix) from exc
        raise


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, h5py's RuntimeError for a failed write/flush/truncate (HDF5 reports those as such), or
    safetensors' SafetensorError for a failed write (it wraps the OS error in its message)."""
    if isinstance(exc, OSError):
        return True
    if type(exc).__name__ == "SafetensorError":
        low = str(exc).lower()
        return any(w in low for w in ("i/o error", "ioerror", "io error", "os error", "file too large",
                                      "no space left", "quota"))
    if isinstance(exc, RuntimeError):
        low = str(exc).lower()
        return any(w in low for w in ("write failed", "unable to synchronously flush", "truncate request failed",
                                      "file too large", "no space left"))
    return False


# h5py files whose writes failed. HDF5 crashes (SIGSEGV) when such a file is closed, so it is left open
# and referenced here; the CLI exits with os._exit after naming the error (see stfeat.cli._common).
ABANDONED: list[Any] = []


def abandon(f: Any) -> None:
    ABANDONED.append(f)


class _FailedHdf5Write:
    """An HDF5 file that a library (anndata) opened, failed to write and closed itself: nothing to keep open."""

    def __init__(self, path: Path) -> None:
        self.filename = str(path)

    def close(self) -> None:
        pass


def check_room(path: Path, need_bytes: int, have_bytes: int = 0) -> None:
    """Refuse, before writing, a cache file that cannot fit under the file-size limit or on the disk."""
    import resource
    import shutil

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and need_bytes > soft:
        raise ResourceError(path, f"the feature cache will need about {need_bytes / 1e6:.1f} MB but the file-size "
                            f"limit (ulimit -f) is {soft / 1e6:.2f} MB.", "raise the limit (`ulimit -f unlimited`) "
                            "and run `stfeat extract` again.")
    free = shutil.disk_usage(path.parent).free
    if need_bytes - have_bytes > free:
        raise ResourceError(path, f"the feature cache will need about {(need_bytes - have_bytes) / 1e6:.1f} MB more "
                            f"but the disk has {free / 1e6:.1f} MB free.", "free disk space or use another "
                            "--cache-dir, and run `stfeat extract` again (finished samples are kept).")


def expected_bytes(n: int, dim: int, n_scales: int, itemsize: int, k: int) -> int:
    """A generous estimate of a complete cache file's size (features, flags, coords, ids, neighbours, metadata)."""
    return int(1.1 * n * dim * n_scales * itemsize + n * (2 * n_scales + 16 + 48 + 12 * k) + 256 * 1024)


class WorkerFailure:
    """What a DataLoader worker returns instead of a batch when it hits a user error.

    Only the error's type and its (path, problem, fix) travel: the exception object itself may not
    unpickle (tblib, when installed, pickles its whole chain, e.g. an imagecodecs error that cannot).
    """

    def __init__(self, exc: StfeatError) -> None:
        self.kind = type(exc)
        self.fields = (getattr(exc, "path", None), getattr(exc, "problem", str(exc)), getattr(exc, "fix", ""))

    @property
    def exc(self) -> StfeatError:
        try:
            return self.kind(*self.fields)
        except TypeError:
            return self.kind(str(self.fields[1]))


def worker_timeout() -> float:
    try:
        return float(os.environ.get(ENV_TIMEOUT, "600"))
    except ValueError:
        return 600.0


def guarded(loader: Any, workers: int) -> Iterator[Any]:
    """Iterate a DataLoader, re-raising workers' user errors and naming worker deaths and stalls."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            msg = str(exc)
            if workers and ("timed out" in msg or "exited unexpectedly" in msg or "is killed by signal" in msg):
                raise ResourceError(None, f"a crop-decoding worker process failed ({msg.splitlines()[0]}); it may "
                                    "have been unable to write a batch to shared memory (/dev/shm full, a "
                                    "file-size limit) or been killed for memory.",
                                    "free /dev/shm and memory, or rerun with --num-workers 0; the feature cache "
                                    "resumes from the last batch written.") from None
            raise
        if isinstance(item, WorkerFailure):
            raise item.exc
        yield item
