"""How many CPU threads the heads should use: the cores other processes leave free.

OpenBLAS's threads meet at a barrier after every column of ``sytrd`` (and every panel of QR, LU,
SVD). On an idle machine two threads halve the time (3,072 x 3,072 ``sytrd``: 1.15 s on one
thread, 0.68 s on two); when another process keeps the cores busy, the waiting threads lose their
time slices and the same call takes 5-30 s (all measured on the 2-core CI machine). So the
thread count follows the cores that are free *now*: the kernel's count of runnable tasks
(``/proc/loadavg``, 4th field) minus this process's own runnable threads, sampled a few times
over ~10 ms. The 1-minute load average is no use here: it mostly reflects this process's own
recent work. Where ``/proc`` is missing (macOS, Windows), BLAS keeps its default.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

_state = threading.local()


def _own_running_threads() -> int:
    n = 0
    try:
        with os.scandir("/proc/self/task") as it:
            for entry in it:
                try:
                    with open(f"/proc/self/task/{entry.name}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                # the state follows the ")" that closes the command name
                if stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R":
                    n += 1
    except OSError:
        return 1
    return n


def other_runnable(samples: int = 5, interval: float = 0.002) -> float | None:
    """Runnable tasks of *other* processes right now (median of a few samples); None if unknown."""
    vals = []
    for i in range(samples):
        try:
            with open("/proc/loadavg", "rb") as f:
                running = int(f.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return None
        vals.append(max(0, running - _own_running_threads()))
        if i + 1 < samples:
            time.sleep(interval)
    vals.sort()
    return float(vals[len(vals) // 2])


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def free_cores() -> int:
    """CPU cores not used by other processes now (at least 1); all cores when unknown.

    ``$STFEAT_CPU_THREADS`` (an int) overrides the measurement, e.g. for reproducible timings or
    bit-identical refits; it caps the linear heads' BLAS threads and the torch heads' threads.
    """
    env = os.environ.get("STFEAT_CPU_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"STFEAT_CPU_THREADS must be an integer; got {env!r}. Fix: unset it "
                             "or set e.g. STFEAT_CPU_THREADS=2.") from None
    total = os.cpu_count() or 1
    n = min(usable_cores(), total)
    busy = other_runnable()
    if busy is None:
        return n
    # /proc/loadavg counts the whole machine; when this process may run on only some of its
    # cores (a batch scheduler's allocation, taskset), assume the other tasks fill the other
    # cores first, so a job on its own 4 of 64 busy cores still uses its 4
    busy_here = max(0.0, busy - (total - n))
    return max(1, min(n, n - int(round(busy_here))))


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """Run the block with ``n`` BLAS threads (default :func:`free_cores`), restored afterwards.

    Nested uses inside an active one are free (they keep the outer setting): a head wraps its
    whole fit once, and the kernels it calls wrap themselves for standalone use.
    """
    if getattr(_state, "active", False):
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(free_cores() if n is None else int(n), user_api="blas"):
        _state.active = True
        try:
            yield
        finally:
            _state.active = False
