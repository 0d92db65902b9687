"""Lazy (row-chunked) reading of feature caches (re-exported by :mod:`stfeat.cache`).

A :class:`LazyRows` stands for one ``/features/{scale}`` dataset of a complete cache: it knows the
file, the dataset and an optional row order (the alignment to the sample's barcodes) and reads only
the rows asked for, as float32. ``np.asarray(lazy)`` still reads everything (so code written for
in-memory arrays keeps working); the stage-two paths that must scale use :meth:`LazyRows.rows`.

The datasets are HDF5-chunked (``stfeat.cache.add_scale``: 256-row chunks, uncompressed), so they
cannot be ``np.memmap``-ed; h5py reads of a contiguous row range cost one pass over those chunks.
The blake2b checksum of a dataset needs all of it and is therefore not verified by a lazy read;
every chunk read is still checked for non-finite values and the file's attributes, sample id and
shapes are checked when it is opened (:func:`read_cache_lazy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stfeat.errors import InputError

#: a sample whose chosen scales take more float32 bytes than this is read lazily (``lazy=None``);
#: ``$STFEAT_LAZY_BYTES`` overrides it. 1 GiB = ~87k spots x 3 scales x 1,024 features.
LAZY_THRESHOLD_BYTES = 1 << 30


def lazy_threshold() -> int:
    """:data:`LAZY_THRESHOLD_BYTES`, or ``$STFEAT_LAZY_BYTES`` when set."""
    v = os.environ.get("STFEAT_LAZY_BYTES")
    if v in (None, ""):
        return LAZY_THRESHOLD_BYTES
    try:
        return int(float(v))
    except ValueError:
        raise InputError(None, f"STFEAT_LAZY_BYTES={v!r} is not a number of bytes.",
                         "set it to e.g. 1e9, or unset it.") from None


class LazyRows:
    """Rows of one feature dataset, read on demand as float32.

    Parameters
    ----------
    path, name
        The cache file and the dataset (``"features/112"``).
    shape
        (n_rows, dim) of the dataset.
    order
        Row ``i`` of this view is row ``order[i]`` of the dataset (None = identity).
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, name: str, shape: tuple[int, int], order: np.ndarray | None = None):
        self.path, self.name = Path(path), str(name)
        self._n_file, self.dim = int(shape[0]), int(shape[1])
        self.order = None if order is None else np.asarray(order, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n_file if self.order is None else len(self.order), self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyRows({self.path.name}:{self.name}, shape={self.shape})"

    def _read_file_rows(self, f: Any, a: int, b: int) -> np.ndarray:
        return f[self.name][a:b]

    def rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` of this view, (m, dim) float32 (reads only what is needed).

        ``out``: a float32 (m, dim) array (e.g. a column block of a reused buffer) to write them into:
        no fresh allocation, whose page faults cost more than the read itself at chunk sizes.
        """
        import h5py

        start, stop = max(0, int(start)), min(len(self), int(stop))
        if stop <= start:
            return np.zeros((0, self.dim), np.float32) if out is None else out[:0]
        with h5py.File(self.path, "r") as f:
            if self.order is None:
                raw = self._read_file_rows(f, start, stop)
            else:
                want = self.order[start:stop]
                lo, hi = int(want.min()), int(want.max()) + 1
                if hi - lo <= 4 * len(want) + 1024:  # one contiguous read, then a gather
                    raw = self._read_file_rows(f, lo, hi)[want - lo]
                else:  # scattered rows: h5py point selection needs increasing, unique indices
                    uniq, inv = np.unique(want, return_inverse=True)
                    raw = f[self.name][uniq][inv]
        if out is None:
            out = np.asarray(raw, dtype=np.float32)
        else:
            if out.shape != raw.shape or out.dtype != np.float32:
                raise ValueError(f"out must be float32 {raw.shape}; got {out.dtype} {out.shape}")
            out[...] = raw
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise InputError(self.path, f"{self.name} holds NaN or infinite values in {int(bad.sum())} spots "
                             f"(rows {start}..{stop} of the aligned view).",
                             "re-extract the sample with `stfeat extract ... --overwrite` (with float32 "
                             "features, --dtype float32, if the encoder overflows float16).")
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.rows(0, len(self))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self.rows(start, stop)
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            return self.rows(int(key), int(key) + 1)[0]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim == 1 and idx.dtype.kind in "iu":  # a reordering: stays lazy
            idx = np.where(idx < 0, idx + len(self), idx).astype(np.int64)
            return LazyRows(self.path, self.name, (self._n_file, self.dim),
                            idx if self.order is None else self.order[idx])
        return np.asarray(self)[key]


def read_cache_lazy(path: str | Path, *, scales: Sequence[float | str] | None = None,
                    sample_id: str | None = None):
    """Like :func:`stfeat.cache.read_cache`, but the features are :class:`LazyRows` (nothing big is read).

    Barcodes, coordinates (checksum-verified) and the neighbour graph are read; feature datasets are
    checked for shape only (see the module docstring for what a lazy read does not verify).
    """
    import h5py

    from stfeat.cache import CacheData, _verified, checked_attrs, scale_names_in

    path = Path(path)
    attrs = checked_attrs(path, sample_id)
    with h5py.File(path, "r") as f:
        names = scale_names_in(path, f, scales)
        barcodes = f["barcodes"].asstr()[...].astype(str)
        n = len(barcodes)
        coords = _verified(path, f["coords"], "coords")
        feats = {}
        for s in names:
            ds = f["features"][s]
            if ds.ndim != 2 or ds.shape[0] != n:
                raise InputError(path, f"features/{s} has shape {ds.shape} but the file lists {n} spots: the "
                                 "file is damaged.",
                                 "delete it and re-extract the sample (`stfeat extract ... --overwrite`).")
            feats[s] = LazyRows(path, f"features/{s}", ds.shape)
        if coords.shape != (n, 2):
            raise InputError(path, f"coords is {coords.shape}, not ({n}, 2): the file is damaged.",
                             "delete it and re-extract the sample.")
        padded = {s: f["padded"][s][...].astype(bool) for s in names if s in f.get("padded", {})}
        nb = f.get("neighbors")
        nbi = nb["spatial"][...] if nb is not None and "spatial" in nb else None
        nbd = nb["spatial_dist_um"][...] if nb is not None and "spatial_dist_um" in nb else None
        return CacheData(barcodes=barcodes, coords=coords.astype(np.float64), features=feats, padded=padded,
                         neighbors=nbi, neighbor_dist_um=nbd, attrs=attrs)


def feature_bytes(path: str | Path, names: Sequence[str] | None = None) -> int:
    """float32 bytes the feature datasets ``names`` (default all) would take in memory (shapes only)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            g = f["features"]
            return sum(4 * int(np.prod(g[s].shape)) for s in (names or list(g)) if s in g)
    except (OSError, KeyError):
        return 0  # the reader then names what is wrong with the file


def feature_fingerprint(path: str | Path, scales: Sequence[str]) -> dict[str, Any]:
    """What identifies the features of ``scales`` in a cache without reading them: the file's config hash,
    size and modification time, and each dataset's shape, dtype and completion checksum."""
    import h5py

    path = Path(path)
    st = path.stat()
    out: dict[str, Any] = {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with h5py.File(path, "r") as f:
        out["config_hash"] = str(f.attrs.get("config_hash", ""))
        for s in scales:
            ds = f["features"][s]
            cs = ds.attrs.get("blake2b", "")
            out[f"features/{s}"] = [list(ds.shape), str(ds.dtype), cs.decode() if isinstance(cs, bytes) else str(cs)]
    return out


# ---------------------------------------------------------------- sufficient statistics beside a cache
STATS_SUFFIX = ".stats"


def stats_path(cache_file: str | Path, key: str) -> Path:
    """``{cache}.h5.stats-{key}.npz``: stage-two sufficient statistics of one cache under one keyed setting."""
    p = Path(cache_file)
    return p.with_name(f"{p.name}{STATS_SUFFIX}-{key}.npz")


def write_stats(cache_file: str | Path, key: str, arrays: dict[str, np.ndarray], *, keep: int = 4) -> Path:
    """Write arrays beside a cache atomically (fresh temporary file, rename); plain ``.npz``, no pickle.

    ``key`` is ``"{features}-{setting}"``: files of the same cache whose ``features`` part differs describe
    features that are no longer current and are removed; of the current ones (other genes, transforms,
    layouts) the ``keep`` most recent stay.
    """
    import io

    from stfeat._safe_write import write_bytes

    out = stats_path(cache_file, key)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(out, buf.getvalue())
    prefix = f"{Path(cache_file).name}{STATS_SUFFIX}-"
    current = key.split("-")[0]
    same = []
    for old in out.parent.glob(f"{prefix}*.npz"):
        if old.name == out.name or old.is_symlink():
            continue
        if old.name[len(prefix):].split("-")[0] != current:
            old.unlink(missing_ok=True)
        else:
            same.append(old)
    for old in sorted(same, key=lambda p: p.stat().st_mtime_ns)[:max(0, len(same) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return out


def read_stats(cache_file: str | Path, key: str) -> dict[str, np.ndarray] | None:
    """The statistics written under ``key``, or None when absent or unreadable (they are recomputed)."""
    p = stats_path(cache_file, key)
    if not p.is_file() or p.is_symlink():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
