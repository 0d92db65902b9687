"""The FAISS index of a cache's embeddings: "find spots like this one", in one slide or across a cohort.

Every complete feature cache holds, per field of view, a serialised FAISS index of its spots' embeddings
(``/faiss/{scale}``, uint8: ``faiss.serialize_index``, which is FAISS's own binary format, not a pickle),
written when the file is finalised (:func:`write_indexes`, called by :func:`stfeat.cache.finalize` and
:func:`stfeat.cache.write_cache`). Similarity is cosine: embeddings are L2-normalised and searched by inner
product. Index row ``i`` is cache row ``i``.

* up to :data:`IVF_THRESHOLD` spots: ``IndexScalarQuantizer`` with float16 codes (exact search over the
  embeddings at the cache's own float16 precision, 2 bytes per dimension, no training);
* above it (Visium HD bins, Xenium cells): ``IndexIVFScalarQuantizer`` (8-bit codes, ``4 sqrt(n)`` k-means
  cells trained on a seeded sample of at most 256 points per cell; 1 byte per dimension), searched with
  ``nprobe`` = :data:`NPROBE` (stored in the attrs).

:func:`similar_spots` searches the indexes of one or many caches with query spots or vectors and merges the
hits; :func:`load_index` moves an index to the GPU when FAISS has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stfeat.errors import InputError

GROUP = "faiss"
#: above this many spots a cache's index is IVF (approximate) instead of exact
IVF_THRESHOLD = 200_000
NPROBE = 32
_SEED = 1234


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def build_index(X: np.ndarray, *, ivf_threshold: int = IVF_THRESHOLD) -> tuple[Any, dict[str, Any]]:
    """A FAISS index of the rows of ``X`` (cosine) and its description (kind, n, nlist, nprobe)."""
    import faiss

    Xn = _normalised(X)
    n, d = Xn.shape
    if n <= ivf_threshold:
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        index.add(Xn)
        return index, {"kind": "flat-fp16", "n": n, "metric": "cosine"}
    nlist = int(4 * np.sqrt(n))
    quant = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quant, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(_SEED)
    sample = Xn[np.sort(rng.choice(n, size=min(n, 256 * nlist), replace=False))]
    index.train(sample)
    index.add(Xn)
    index.nprobe = NPROBE
    return index, {"kind": "ivf-sq8", "n": n, "nlist": nlist, "nprobe": NPROBE, "metric": "cosine"}


def write_indexes(f: Any, *, ivf_threshold: int = IVF_THRESHOLD) -> None:
    """(Re)write ``/faiss/{scale}`` of every feature dataset of an open cache file."""
    import json

    import faiss

    if GROUP in f:
        del f[GROUP]
    g = f.create_group(GROUP)
    for name in f["features"]:
        ds = f["features"][name]
        if ds.shape[0] == 0:
            continue
        index, info = build_index(ds[...], ivf_threshold=ivf_threshold)
        out = g.create_dataset(name, data=faiss.serialize_index(index))
        out.attrs["index"] = json.dumps(info, sort_keys=True)


def describe(f: Any) -> list[str]:
    """One line per index of an open cache file (for ``stfeat info``)."""
    import json

    if GROUP not in f:
        return ["  faiss:      none (written by an older stfeat; re-extract with --overwrite to add it)"]
    out = []
    for name in sorted(f[GROUP], key=float):
        info = json.loads(f[GROUP][name].attrs.get("index", "{}"))
        out.append(f"  faiss/{name:<8} {info.get('kind')} index of {info.get('n')} spots ({info.get('metric')}), "
                   f"{f[GROUP][name].shape[0] / 2**20:.1f} MiB")
    return out


def load_index(path: str | Path, scale: float | str, *, gpu: bool | None = None) -> Any:
    """The deserialised index of one scale of a cache file; on the GPU when ``gpu`` (None: when FAISS has one)."""
    import faiss
    import h5py

    from stfeat.cache import checked_attrs, scale_name

    path = Path(path)
    checked_attrs(path, None)
    name = scale_name(float(scale))
    with h5py.File(path, "r") as f:
        if GROUP not in f or name not in f[GROUP]:
            raise InputError(path, f"holds no FAISS index at scale {name} um (a cache from an older stfeat, or a "
                             "scale it does not hold).", "re-extract the sample with `stfeat extract ... --overwrite`.")
        raw = f[GROUP][name][...]
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(raw, dtype=np.uint8))
    except RuntimeError as exc:
        raise InputError(path, f"its FAISS index at {name} um cannot be read ({str(exc).splitlines()[0]}).",
                         "re-extract the sample with --overwrite.") from None
    use_gpu = gpu if gpu is not None else (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def similar_spots(features: Any, query: Any, *, scale: float | str | None = None, k: int = 10,
                  exclude_self: bool = True, gpu: bool | None = None):
    """The ``k`` most similar spots (cosine of the embeddings at ``scale``) to each query, over every cache.

    Parameters
    ----------
    features
        A :class:`stfeat.features.FeatureSet` (its samples' cache files are searched) or cache file paths.
    query
        ``(sample_id, barcode)`` or a list of them (spots of ``features``), or an array of embeddings (q, d).
    scale
        Field of view in micrometres; default the first (smallest) one.
    exclude_self
        Drop a query spot from its own hits.

    Returns
    -------
    pandas.DataFrame
        One row per hit: ``query`` (index of the query), ``rank`` (0 = most similar), ``sample_id``,
        ``barcode``, ``similarity`` (cosine; float16/8-bit codes make it approximate to ~1e-3).
    """
    import h5py
    import pandas as pd

    from stfeat.cache import scale_name

    paths = _paths(features)
    if not paths:
        raise InputError(None, "no feature caches to search.", "give a FeatureSet or cache file paths.")
    with h5py.File(paths[0], "r") as f:
        name = scale_name(float(scale)) if scale is not None else sorted(f["features"], key=float)[0]
    ids: dict[Path, tuple[str, np.ndarray]] = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            ids[p] = (str(f.attrs.get("sample_id", p.stem)), f["barcodes"].asstr()[...].astype(str))
    Q, q_keys = _queries(query, paths, ids, name)
    Qn = _normalised(Q)
    kk = int(k) + (1 if exclude_self else 0)
    hits = []
    for p in paths:
        index = load_index(p, name, gpu=gpu)
        if index.d != Qn.shape[1]:
            raise InputError(p, f"its embeddings at {name} um are {index.d}-d, the queries {Qn.shape[1]}-d.",
                             "search caches of one encoder, with queries from the same encoder.")
        sims, rows = index.search(Qn, min(kk, index.ntotal))
        sid, bcs = ids[p]
        for qi in range(len(Qn)):
            for s, r in zip(sims[qi], rows[qi]):
                if r < 0 or (exclude_self and q_keys[qi] == (sid, bcs[r])):
                    continue
                hits.append((qi, sid, bcs[r], float(s)))
    df = pd.DataFrame(hits, columns=["query", "sample_id", "barcode", "similarity"])
    df = df.sort_values(["query", "similarity"], ascending=[True, False], kind="stable")
    df = df.groupby("query", sort=True).head(int(k)).reset_index(drop=True)
    df.insert(1, "rank", df.groupby("query").cumcount())
    return df


def _paths(features: Any) -> list[Path]:
    if hasattr(features, "samples"):
        out = [features.samples[s].source for s in features.sample_ids]
        if any(p is None for p in out):
            raise InputError(None, "some samples of the FeatureSet have no cache file to search.",
                             "load it from caches (FeatureSet.load / st.extract).")
        return [Path(p) for p in out]
    if isinstance(features, (str, Path)):
        features = [features]
    return [Path(p) for p in features]


def _queries(query: Any, paths: Sequence[Path], ids: dict, name: str) -> tuple[np.ndarray, list]:
    """(q, d) query embeddings and their (sample_id, barcode) keys (None for given vectors)."""
    import h5py

    if isinstance(query, np.ndarray):
        Q = np.atleast_2d(query).astype(np.float32)
        return Q, [None] * len(Q)
    spots = [query] if isinstance(query, tuple) else list(query)
    by_id = {sid: (p, bcs) for p, (sid, bcs) in ids.items()}
    rows = []
    for sid, bc in spots:
        if sid not in by_id:
            raise InputError(None, f"query sample {sid!r} is not among the searched caches ({sorted(by_id)}).",
                             "give (sample_id, barcode) pairs of the searched samples, or embedding vectors.")
        p, bcs = by_id[sid]
        hit = np.flatnonzero(bcs == str(bc))
        if not len(hit):
            raise InputError(p, f"has no spot with barcode {bc!r}.", "give a barcode of that sample.")
        with h5py.File(p, "r") as f:
            rows.append(f["features"][name][int(hit[0])].astype(np.float32))
    return np.stack(rows), [(str(s), str(b)) for s, b in spots]


__all__ = ["build_index", "write_indexes", "load_index", "similar_spots", "describe", "IVF_THRESHOLD"]
