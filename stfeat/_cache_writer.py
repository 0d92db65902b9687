"""The background thread that writes finished batches into an open feature cache (used by stfeat.extract)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Sequence

import numpy as np


class _Writer:
    """Writes finished batches to the open HDF5 file in a background thread (small queue), so the
    encoder never waits on disk. Each batch: feature rows, padded flags, then done flags, then flush."""

    def __init__(self, f: Any, names: Sequence[str], dtype: np.dtype, maxsize: int = 4) -> None:
        self.f, self.names, self.dtype = f, list(names), dtype
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="stfeat-cache-writer", daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            a, b, feats, padded, tissue, tokens = item
            try:
                for j, s in enumerate(self.names):
                    self.f["features"][s][a:b] = feats[:, j].astype(self.dtype)
                    if tokens is not None:  # (b, S, G*G, C): stfeat.patch_tokens
                        self.f["tokens"][s][a:b] = np.asarray(tokens[:, j], np.float16)
                    self.f["padded"][s][a:b] = padded[:, j]
                    if tissue is not None:
                        self.f["tissue"][s][a:b] = np.asarray(tissue[:, j], np.float16)
                for s in self.names:
                    self.f["done"][s][a:b] = True
                self.f.flush()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc

    def put(self, a: int, b: int, feats: np.ndarray, padded: np.ndarray, tissue: np.ndarray | None = None,
            tokens: np.ndarray | None = None) -> None:
        self.check()
        self.q.put((a, b, feats, padded, tissue, tokens))

    def check(self) -> None:
        if self.error is not None:
            from stfeat._faults import disk_error, is_write_failure

            if is_write_failure(self.error):
                raise disk_error(self.f.filename, self.error) from None
            raise self.error

    def close(self) -> None:
        self.q.put(None)
        self.t.join()


