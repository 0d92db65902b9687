"""How many CPU threads the heads use: ``n_jobs``, scikit-learn's convention, resolved in one place.

The count is a function of the head's ``n_jobs``, ``$STFEAT_CPU_THREADS`` and this process's CPU
affinity only, never of what other processes are doing: BLAS and torch may round differently with
another thread count, so a count sampled from the machine's load would make two refits of the
same head on the same data differ in their last bits. With the default, refits are bit-identical.

On a machine shared with other busy processes, fewer threads can be much faster (OpenBLAS's
threads meet at a barrier after every column of ``sytrd``; a waiting thread that loses its time
slice stalls all of them): pass ``n_jobs=1`` or set ``STFEAT_CPU_THREADS=1``.
"""

from __future__ import annotations

import contextlib
import os
import threading

_state = threading.local()

ENV_THREADS = "STFEAT_CPU_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_n_jobs(n_jobs: int | None = None) -> int:
    """The number of threads ``n_jobs`` means, at least 1.

    ``None``: ``$STFEAT_CPU_THREADS`` when set, else all cores of the process's CPU affinity;
    ``-1``: all those cores; ``-k``: all but ``k - 1`` of them (scikit-learn's convention);
    a positive int: that many.
    """
    if n_jobs is None:
        env = os.environ.get(ENV_THREADS, "").strip()
        if not env:
            return usable_cores()
        try:
            n_jobs = int(env)
        except ValueError:
            raise ValueError(f"{ENV_THREADS} must be an integer; got {env!r}. Fix: unset it or set "
                             f"e.g. {ENV_THREADS}=2.") from None
        if n_jobs < 1:
            raise ValueError(f"{ENV_THREADS} must be >= 1; got {env!r}. Fix: unset it or set e.g. "
                             f"{ENV_THREADS}=2.")
    n = int(n_jobs)
    if n == 0:
        raise ValueError("n_jobs=0 means no thread at all. Fix: use None (default), -1 (all cores) "
                         "or a positive count.")
    if n < 0:
        return max(1, usable_cores() + 1 + n)
    return n


@contextlib.contextmanager
def blas_threads(n_jobs: int | None = None):
    """Run the block with :func:`resolve_n_jobs` (``n_jobs``) BLAS threads, restored afterwards.

    Nested uses inside an active one are free (they keep the outer setting): a head wraps its
    whole fit once, and the kernels it calls wrap themselves for standalone use.
    """
    if getattr(_state, "active", False):
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(resolve_n_jobs(n_jobs), user_api="blas"):
        _state.active = True
        try:
            yield
        finally:
            _state.active = False


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads (torch's own MKL/OpenMP), restored after."""
    import torch

    old = torch.get_num_threads()
    if int(n) != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
