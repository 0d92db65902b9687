"""The HDF5 feature cache: one file per sample and encoder configuration.

Layout (schema version :data:`stfeat._constants.CACHE_SCHEMA_VERSION`)::

    {cache_dir}/{encoder_tag}/{sample_id}.h5
      /barcodes                    (n,) utf-8 str
      /coords                      (n, 2) float64, spot centres, level-0 px, (x, y)
      /features/{scale}            (n, d) float16 (or float32), one dataset per field of view;
                                   ``scale`` is ``f"{um:g}"`` (e.g. "112"), attrs ``scale_um``
      /padded/{scale}              (n,) bool, the crop ran past the image edge (white padding)
      /tissue/{scale}              (n,) float16, tissue fraction of the crop (stfeat.views; NaN: not
                                   measured, e.g. dense mode; absent in files written before it existed)
      /done/{scale}                (n,) bool, rows already written (the resume mask)
      /neighbors/spatial           (n, k) int64, k nearest spots (self excluded, -1 = none)
      /neighbors/spatial_dist_um   (n, k) float32, their distances in micrometres
      attrs: schema_version, complete, created, completed, encoder, encoder_tag, encoder_identity
             (JSON), weights_id, config_hash, um_per_px, um_per_px_source, scales_um, patch_px,
             embed_dim, dtype, batch_size, k_neighbors, sample_id, patient, n_spots, image_path,
             stfeat_version, torch_version, timm_version, h5py_version; views (JSON, stfeat.views),
             n_views, extract_seconds (extraction wall seconds, summed over resumes)

``encoder_tag`` is the encoder name made safe for a folder name (see :func:`encoder_tag`): different
weights under one name are kept apart by the ``config_hash`` attribute, and a mismatch is an error
that asks for ``--overwrite`` or another cache directory, never a silent mix.

Writing is incremental and crash-safe: a file being written is ``{sample_id}.h5.partial``; every
batch writes its rows, then its ``done`` flags, then flushes. Only when every scale is done and the
neighbours are stored does the writer set ``complete`` and rename the file to ``{sample_id}.h5``, so
a file under the final name is always complete. A sidecar ``{sample_id}.h5.lock`` holds an OS lock
(``fcntl.flock``) while a process writes; the OS releases it when that process dies. It is opened
without following links and removed when the writer finishes (:mod:`stfeat._cache_lock`).

Beside a cache, ``{sample_id}.h5.stats-{key}.npz`` holds stage-two sufficient statistics
(:mod:`stfeat.suffstats_cache`; written atomically, plain arrays, no pickle; one key per cache).
Large caches are read lazily, in row chunks (:mod:`stfeat._cache_lazy`).

Integrity (:mod:`stfeat._cache_integrity`): file names are injective in the sample id (an id that
is not filesystem-safe gets ``~`` + a hash of the exact id) and the stored ``sample_id`` is checked on
every read; coords and each feature dataset carry a blake2b checksum (attr ``blake2b``) written at
completion and verified on read; the ``config_hash`` must match the stored ``encoder_identity``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stfeat import _constants as K
from stfeat.errors import CacheLockedError, InputError  # noqa: F401 - CacheLockedError re-exported

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
_ATTR_JSON = {"encoder_identity", "views"}


# ---------------------------------------------------------------- names and paths
def scale_name(um: float | str) -> str:
    """Dataset name of a field of view in micrometres: ``f"{um:g}"`` (112.0 -> "112", "56.5" -> "56.5");
    the one spelling of scale names (:mod:`stfeat.features` re-exports it)."""
    try:
        return f"{float(um):g}"
    except (TypeError, ValueError):
        raise ValueError(f"scale {um!r} is not a number of micrometres (e.g. 112, 224, 448)") from None


def encoder_tag(name: str) -> str:
    """Folder name for an encoder: its name made filesystem-safe.

    Registry aliases map to the canonical name (``"UNI"`` -> ``"uni"``), ``"timm:densenet121"`` -> ``"timm-densenet121"``,
    ``"hf-hub:MahmoodLab/UNI"`` -> ``"hf-hub-mahmoodlab-uni"``, a weights path -> its file stem.
    """
    s = str(name)
    from stfeat.views import ViewSpec

    base, views = ViewSpec.from_variant(s)  # "densenet121+macenko+d8": the base's tag + the views' suffix
    if not views.plain:
        return encoder_tag(base) + views.suffix
    if not s.startswith(("hf-hub:", "timm:")) and "/" not in s and os.sep not in s:
        try:  # an alias ("UNI", "uni_v1") and its canonical name share one folder
            from stfeat.encoders.base import get_spec

            s = get_spec(s).name
        except (KeyError, ImportError, AttributeError):
            pass
    if ("/" in s or os.sep in s) and not s.startswith(("hf-hub:", "timm:")):
        s = Path(s).name
        for suf in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
            if s.endswith(suf):
                s = s[: -len(suf)]
    s = re.sub(r"[^a-z0-9._+-]+", "-", s.lower()).strip("-.")
    return s or "encoder"


def cache_path(cache_dir: str | Path, encoder_tag: str, sample_id: str) -> Path:
    """``{cache_dir}/{encoder_tag}/{name}.h5``, one file per exact sample id (injective).

    A sample id made only of ``A-Za-z0-9._+-`` (not starting with a dot) is used as it is (``C2.h5``).
    Any other id is made filesystem-safe AND given ``~`` plus a short hash of the exact id
    (``"A B"`` -> ``A_B~3f9a0c1d2e.h5``), so ``"A B"`` and ``"A_B"`` never share a file. ``~`` never
    occurs in a kept id, so the two forms cannot collide either; the file's stored ``sample_id`` is
    still checked on every read.
    """
    import hashlib

    raw = str(sample_id)
    sid = re.sub(r"[^A-Za-z0-9._+-]+", "_", raw).strip(".")
    if sid != raw or not sid:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        sid = f"{sid[:80] or 'sample'}~{digest}"
    return Path(cache_dir) / encoder_tag / f"{sid}.h5"


def partial_path(path: str | Path) -> Path:
    """Where the unfinished version of ``path`` lives while it is written."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def lock_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + LOCK_SUFFIX)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(identity: Mapping[str, Any]) -> str:
    """Short, stable hash of an encoder identity dict (JSON with sorted keys, sha256, 16 hex)."""
    import hashlib

    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- reading
def _decode_attr(key: str, v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if key in _ATTR_JSON and isinstance(v, str):
        with contextlib.suppress(ValueError):
            return json.loads(v)
    return v


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The file's attributes only (no dataset is read): fast enough to decide a skip.

    Raises :class:`InputError` when the file is not an HDF5 file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: _decode_attr(k, v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise InputError(path, f"cannot be read as an HDF5 feature cache ({exc}).",
                         "delete it and run `stfeat extract` again, or pass --overwrite.") from None


@dataclass
class CacheData:
    """The content of one complete cache file.

    Attributes
    ----------
    barcodes
        (n,) spot barcodes.
    coords
        (n, 2) spot centres in level-0 px, (x, y).
    features
        Scale name (``"112"``) -> (n, d) float32 embeddings.
    padded
        Scale name -> (n,) bool, True where the crop ran past the image edge.
    tissue_fraction
        Scale name -> (n,) float32 tissue fraction of each spot's crop (NaN where not measured); scales of a
        file written before it was recorded are absent.
    neighbors, neighbor_dist_um
        (n, k) spatial neighbour indices (self excluded, -1 = none) and distances in um, or None.
    attrs
        Provenance (see the module docstring).
    """

    barcodes: np.ndarray
    coords: np.ndarray
    features: dict[str, np.ndarray]
    padded: dict[str, np.ndarray] = field(default_factory=dict)
    tissue_fraction: dict[str, np.ndarray] = field(default_factory=dict)
    neighbors: np.ndarray | None = None
    neighbor_dist_um: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def scales_um(self) -> list[float]:
        return [float(s) for s in self.features]

    @property
    def n_spots(self) -> int:
        return int(len(self.barcodes))

    def stacked(self, scales: Sequence[float | str] | None = None) -> np.ndarray:
        """Features of the given scales (default all) side by side: (n, sum of d)."""
        names = list(self.features) if scales is None else [_as_name(s) for s in scales]
        return np.concatenate([self.features[s] for s in names], axis=1)


def _as_name(s: float | str) -> str:
    return scale_name(float(s))


def _check_schema(path: Path, attrs: Mapping[str, Any]) -> None:
    if "schema_version" not in attrs or "config_hash" not in attrs:
        raise InputError(path, "is not an stfeat feature cache (schema attributes are missing).",
                         "point to a file written by `stfeat extract`.")
    if int(attrs["schema_version"]) > K.CACHE_SCHEMA_VERSION:
        raise InputError(path, f"uses cache schema {attrs['schema_version']}, newer than this stfeat "
                         f"understands ({K.CACHE_SCHEMA_VERSION}).", "upgrade stfeat.")


def checked_attrs(path: Path, sample_id: str | None) -> dict[str, Any]:
    """The attrs of a finished cache file of ``sample_id``, after every check that needs no feature read."""
    if not path.exists():
        hint = " (an unfinished run left a .partial file: rerun `stfeat extract` to resume)" \
            if partial_path(path).exists() else ""
        raise InputError(path, f"does not exist{hint}.", "run `stfeat extract` for this sample first.")
    attrs = read_attrs(path)
    _check_schema(path, attrs)
    if not attrs.get("complete", False):
        raise InputError(path, "is an incomplete feature cache (its extraction was interrupted).",
                         "rerun `stfeat extract` to resume it.")
    check_sample_id(path, attrs, sample_id)
    verify_attrs(path, attrs)
    return attrs


def scale_names_in(path: Path, f: Any, scales: Sequence[float | str] | None) -> list[str]:
    """The scale names of an open cache file to read (all, or ``scales``, which must be there), ascending."""
    have = list(f["features"].keys())
    names = have if scales is None else [_as_name(s) for s in scales]
    missing = [s for s in names if s not in have]
    if missing:
        raise InputError(path, f"holds no features for scale(s) {missing} um (it has {have}).",
                         "run `stfeat extract` with those --scales-um (they are added to the file).")
    return sorted(names, key=float)


def read_cache(path: str | Path, *, scales: Sequence[float | str] | None = None,
               sample_id: str | None = None) -> CacheData:
    """Read a complete cache file (features as float32).

    Parameters
    ----------
    path
        A ``.h5`` file written by :func:`stfeat.extraction.extract` or :func:`write_cache`.
    scales
        Fields of view to read (micrometres or names); default all.
    sample_id
        The sample the file is read for: a file holding another sample's features is refused.

    Raises
    ------
    InputError
        Missing, unreadable, foreign, incomplete, edited or corrupt file (checksums, NaN features,
        rows that do not match its spots), another sample's file, or a scale it does not hold.
    """
    import h5py

    path = Path(path)
    attrs = checked_attrs(path, sample_id)
    with h5py.File(path, "r") as f:
        names = scale_names_in(path, f, scales)
        barcodes = f["barcodes"].asstr()[...].astype(str)
        n = len(barcodes)
        coords = _verified(path, f["coords"], "coords")
        feats = {s: _verified(path, f["features"][s], f"features/{s}") for s in names}
        for s, v in feats.items():
            if v.ndim != 2 or v.shape[0] != n:
                raise InputError(path, f"features/{s} has {v.shape[0]} rows but the file lists {n} spots: the "
                                 "file is damaged.", "delete it and re-extract the sample (`stfeat extract ... --overwrite`).")
            bad = ~np.isfinite(v).all(axis=1)
            if bad.any():
                raise InputError(path, f"features/{s} holds NaN or infinite values in {int(bad.sum())} of {n} spots "
                                 f"(e.g. spot {barcodes[np.flatnonzero(bad)[0]]}).",
                                 "re-extract the sample with `stfeat extract ... --overwrite` (with float32 "
                                 "features, --dtype float32, if the encoder overflows float16).")
        if coords.shape != (n, 2):
            raise InputError(path, f"coords is {coords.shape}, not ({n}, 2): the file is damaged.",
                             "delete it and re-extract the sample.")
        feats = {s: v.astype(np.float32, copy=False) for s, v in feats.items()}
        padded = {s: f["padded"][s][...].astype(bool) for s in names if s in f.get("padded", {})}
        tissue = {s: f["tissue"][s][...].astype(np.float32) for s in names if s in f.get("tissue", {})}
        nb = f.get("neighbors")
        nbi = nb["spatial"][...] if nb is not None and "spatial" in nb else None
        nbd = nb["spatial_dist_um"][...] if nb is not None and "spatial_dist_um" in nb else None
        if nbi is not None and nbi.shape[0] != n:
            raise InputError(path, f"neighbors/spatial has {nbi.shape[0]} rows, not {n}: the file is damaged.",
                             "delete it and re-extract the sample.")
        return CacheData(
            barcodes=barcodes, coords=coords.astype(np.float64),
            features=feats, padded=padded, tissue_fraction=tissue, neighbors=nbi, neighbor_dist_um=nbd, attrs=attrs,
        )


def describe_cache(path: str | Path) -> str:
    """A human-readable summary of a cache file (used by ``stfeat info CACHE.h5``)."""
    from stfeat._cache_describe import describe

    return describe(Path(path))


# ---------------------------------------------------------------- writing
def set_attrs(f: Any, attrs: Mapping[str, Any]) -> None:
    """Write provenance ``attrs`` on an open cache file (JSON for the structured ones, None as "")."""
    for k, v in attrs.items():
        if v is None:
            v = ""
        if isinstance(v, str):
            v = str(v)  # plain str: h5py rejects subclasses such as torch's TorchVersion
        if k in _ATTR_JSON and not isinstance(v, str):
            v = json.dumps(v, sort_keys=True, default=str)
        if isinstance(v, (list, tuple)):
            v = np.asarray(v, dtype=np.float64 if all(isinstance(x, (int, float)) for x in v) else str)
            if v.dtype.kind == "U":
                import h5py

                v = v.astype(h5py.string_dtype())
        f.attrs[k] = v


def feature_dtype(dtype: str | np.dtype) -> np.dtype:
    """The storage dtype of features: float16 or float32 (ValueError otherwise)."""
    d = np.dtype(dtype)
    if d not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"feature dtype must be float16 or float32, not {d}")
    return d


def create_datasets(f: Any, *, barcodes: np.ndarray, coords: np.ndarray) -> None:
    """Write the per-spot datasets every cache holds (barcodes, coords)."""
    import h5py

    f.create_dataset("barcodes", data=np.asarray(barcodes, dtype=str).astype(h5py.string_dtype()))
    f.create_dataset("coords", data=np.asarray(coords, dtype=np.float64))
    for g in ("features", "padded", "done", "tissue"):
        f.require_group(g)


def add_scale(f: Any, scale_um: float, *, n: int, dim: int, dtype: str | np.dtype,
              chunk_rows: int = 256) -> str:
    """Create the (empty, not done) datasets of one scale; returns its name."""
    name = scale_name(scale_um)
    d = f["features"].create_dataset(name, shape=(n, dim), dtype=feature_dtype(dtype),
                                     chunks=(max(1, min(n, chunk_rows)), dim) if n else None)
    d.attrs["scale_um"] = float(scale_um)
    f["padded"].create_dataset(name, shape=(n,), dtype=bool)
    f["done"].create_dataset(name, shape=(n,), dtype=bool)
    require_tissue(f, name, n)
    return name


def require_tissue(f: Any, name: str, n: int) -> Any:
    """The ``/tissue/{name}`` dataset (created NaN-filled when absent, e.g. in a file started before it existed)."""
    g = f.require_group("tissue")
    if name not in g:
        g.create_dataset(name, shape=(n,), dtype=np.float16, fillvalue=np.float16(np.nan))
    return g[name]


def write_neighbors(f: Any, idx: np.ndarray, dist_um: np.ndarray) -> None:
    g = f.require_group("neighbors")
    for key in ("spatial", "spatial_dist_um"):
        if key in g:
            del g[key]
    g.create_dataset("spatial", data=np.asarray(idx, dtype=np.int64))
    g.create_dataset("spatial_dist_um", data=np.asarray(dist_um, dtype=np.float32))
    g.attrs["k"] = int(np.asarray(idx).shape[1])


def done_masks(f: Any) -> dict[str, np.ndarray]:
    return {s: f["done"][s][...].astype(bool) for s in f["done"].keys()}


def write_cache(
    path: str | Path,
    *,
    barcodes: np.ndarray,
    coords: np.ndarray,
    features: Mapping[str | float, np.ndarray],
    attrs: Mapping[str, Any],
    padded: Mapping[str | float, np.ndarray] | None = None,
    neighbors: np.ndarray | None = None,
    neighbor_dist_um: np.ndarray | None = None,
    dtype: str = "float16",
    tissue_fraction: Mapping[str | float, np.ndarray] | None = None,
    index: bool = True,
) -> Path:
    """Write a complete cache file in one go (tests, synthetic data, conversions).

    ``attrs`` needs at least ``encoder`` and ``sample_id``; schema, config hash (from the encoder
    name when absent), scales, ``complete`` and timestamps are filled in. Written to a temporary
    name and renamed into place. ``index``: also write the FAISS index of the embeddings
    (:mod:`stfeat.spot_index`), as extraction does.
    """
    import h5py

    path = Path(path)
    barcodes = np.asarray(barcodes, dtype=str)
    n = len(barcodes)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (n, 2):
        raise ValueError(f"coords must be ({n}, 2), got {coords.shape}")
    feats = {float(_as_name(k)): np.asarray(v) for k, v in features.items()}
    for s, v in feats.items():
        if v.ndim != 2 or v.shape[0] != n:
            raise ValueError(f"features for scale {s:g} must be ({n}, d), got {v.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    a = dict(attrs)
    a.setdefault("encoder_tag", encoder_tag(str(a.get("encoder", "encoder"))))
    a.setdefault("config_hash", config_hash({"encoder": a.get("encoder"), "weights_id": a.get("weights_id")}))
    stamp = now_iso()
    a.update(schema_version=K.CACHE_SCHEMA_VERSION, n_spots=n, scales_um=sorted(feats),
             dtype=str(feature_dtype(dtype)), created=a.get("created", stamp), completed=stamp, complete=True)
    if feats:
        a.setdefault("embed_dim", int(next(iter(feats.values())).shape[1]))
    from stfeat._safe_write import atomic_path

    # a fresh temporary file of ours (a planted link is never written through), renamed into place once closed
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        create_datasets(f, barcodes=barcodes, coords=coords)
        for s, v in sorted(feats.items()):
            name = add_scale(f, s, n=n, dim=v.shape[1], dtype=dtype)
            f["features"][name][...] = v.astype(feature_dtype(dtype))
            pad = None if padded is None else padded.get(name, padded.get(s))  # type: ignore[call-overload]
            f["padded"][name][...] = np.zeros(n, bool) if pad is None else np.asarray(pad, bool)
            f["done"][name][...] = True
            tf = None if tissue_fraction is None else tissue_fraction.get(name, tissue_fraction.get(s))  # type: ignore[call-overload]
            if tf is not None:
                f["tissue"][name][...] = np.asarray(tf, np.float16)
        if neighbors is not None:
            write_neighbors(f, neighbors, neighbor_dist_um if neighbor_dist_um is not None
                            else np.full(np.shape(neighbors), np.nan, np.float32))
            a.setdefault("k_neighbors", int(np.shape(neighbors)[1]))
        if index:
            from stfeat.spot_index import write_indexes

            write_indexes(f)
        write_checksums(f)
        set_attrs(f, a)
    return path


def finalize(f: Any, *, scales_um: Sequence[float]) -> None:
    """Mark an open, fully written file complete (caller then closes and renames it)."""
    masks = done_masks(f)
    missing = [s for s, m in masks.items() if not m.all()]
    if missing:
        raise RuntimeError(f"{f.filename}: refusing to mark complete, scales {missing} are not done")
    from stfeat.spot_index import write_indexes

    write_indexes(f)  # the FAISS index of every scale's embeddings
    write_checksums(f)
    set_attrs(f, {"scales_um": sorted(float(s) for s in scales_um), "completed": now_iso(),
                   "complete": True})
    f.flush()


# integrity checks live in their own module; re-exported here, the cache's one front door
from stfeat._cache_lock import cache_lock  # noqa: E402
from stfeat._cache_lazy import (  # noqa: E402
    LazyRows,
    feature_bytes,
    feature_fingerprint,
    read_cache_lazy,
    read_stats,
    stats_path,
    write_stats,
)
from stfeat._cache_integrity import (  # noqa: E402
    CHECKSUM_ATTR,
    _verified,
    check_compatible,
    check_sample_id,
    checksum,
    refuse_symlinks,
    verify_attrs,
    write_checksums,
)

__all__ = [
    "CacheData", "cache_path", "encoder_tag", "scale_name", "read_cache", "read_attrs", "write_cache",
    "describe_cache", "cache_lock", "config_hash", "partial_path", "lock_path", "check_sample_id",
    "verify_attrs", "checksum", "check_compatible", "LazyRows", "read_cache_lazy", "feature_bytes", "feature_fingerprint",
    "stats_path", "read_stats", "write_stats", "set_attrs", "feature_dtype", "add_scale", "create_datasets",
    "write_neighbors", "finalize",
]
