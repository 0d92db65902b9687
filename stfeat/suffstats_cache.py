"""Sufficient statistics of a FeatureSet's samples, cached beside their feature caches, and the ridge
fit / streaming prediction that :func:`stfeat.cross_validate` and :func:`stfeat.fit` use at scale.

Each sample's :class:`stfeat.suffstats.SuffStats` is computed by streaming row chunks of its flat
input (:meth:`stfeat.features.FeatureSet.iter_flat`) and written beside its cache as
``{sample}.h5.stats-{key}.npz`` (:func:`stfeat.cache.write_stats`: atomic, no pickle; files of changed
features are removed, at most 4 settings kept per cache). The key hashes
everything the sums depend on: the cache file (path, size, modification time, config hash and each
feature dataset's shape, dtype and completion checksum), the row order (barcodes), the input layout
(scales, neighbour mean, k), the genes, the transform, a checksum of the target matrix itself and the
precision; a stale file is therefore never used, only left to be replaced. Samples held only in
memory (no cache file) are computed, not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from stfeat.suffstats import SuffStats, combine, sample_stats, solve

log = logging.getLogger(__name__)
_VERSION = 1


def stats_key(sf: Any, layout: Mapping[str, Any], genes: Sequence[str], transform: str, Y: np.ndarray,
              precision: str, standardize: str = "none") -> str | None:
    """The key of one sample's statistics, or None when it has no cache file to key them to.

    ``standardize``: the per-slide standardisation the rows went through; statistics given in
    ``sf.standardize_stats`` (instead of the sample's own, a function of its features) enter by checksum."""
    from stfeat.cache import checksum, feature_fingerprint

    if sf.source is None or not sf.source.is_file():
        return None
    feats = {"v": _VERSION, "features": feature_fingerprint(sf.source, layout["scales"])}
    ident = {"barcodes": checksum(np.asarray(sf.barcodes).astype("U")), "scales": list(layout["scales"]),
             "neighbor_mean": bool(layout.get("neighbor_mean")), "k": int(layout.get("k_neighbors", 8)),
             "genes": list(genes), "transform": transform, "targets": checksum(np.asarray(Y)),
             "precision": precision, "standardize": standardize}
    if standardize != "none" and sf.standardize_stats:
        ident["standardize_stats"] = checksum(np.concatenate(
            [np.ravel(np.asarray(v, np.float64)) for s in sorted(sf.standardize_stats) for v in sf.standardize_stats[s]]))

    def h(obj: Any, n: int) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]
    # "{features}-{the rest}": write_stats drops files of features that changed
    return f"{h(feats, 12)}-{h([feats, ident], 20)}"


def featureset_stats(fs: Any, ids: Sequence[str], genes: Sequence[str], transform: str, layout: Mapping[str, Any],
                     *, cache: bool = True, precision: str = "float32", chunk_rows: int | None = None
                     ) -> dict[str, SuffStats]:
    """Sample id -> statistics of its flat input (``layout``) and targets (``genes``, ``transform``)."""
    from stfeat.cache import read_stats, write_stats
    from stfeat.features import CHUNK_ROWS

    out = {}
    for sid in ids:
        sf = fs.samples[sid]
        Y = fs.targets(sid, list(genes), transform)
        # the rows are those of fs.iter_flat: standardised per slide under fs.standardize
        key = stats_key(sf, layout, genes, transform, Y, precision, fs.standardize) if cache else None
        got = None if key is None else read_stats(sf.source, key)
        if got is not None:
            out[sid] = SuffStats.from_arrays(got)
            log.info("sufficient statistics of %s reused (%s)", sid, key)
            continue
        chunks = ((X, Y[a:a + len(X)]) for _, a, X in fs.iter_flat(
            [sid], chunk_rows=chunk_rows or CHUNK_ROWS, neighbor_mean=bool(layout.get("neighbor_mean")),
            k=int(layout.get("k_neighbors", 8)), reuse_buffer=True))
        out[sid] = sample_stats(chunks, precision=precision)
        if key is not None:
            try:
                write_stats(sf.source, key, out[sid].to_arrays())
            except OSError as exc:  # a read-only cache folder: compute again next time
                log.warning("cannot store the statistics of %s beside %s (%s)", sid, sf.source, exc)
    return out


def group_stats(stats: Mapping[str, SuffStats], group_of: Mapping[str, str], cols: Sequence[int] | None = None
                ) -> dict[str, SuffStats]:
    """Statistics per group (the samples of a group summed), optionally for a subset of the gene columns.

    The grouping is :func:`stfeat.evaluate.inner_groups`'s: the given groups when there are two or more
    among these samples, else each sample is its own group.
    """
    labels = {s: str(group_of[s]) for s in stats}
    if len(set(labels.values())) < 2:
        labels = {s: s for s in stats}
    out: dict[str, list[SuffStats]] = {}
    for s in sorted(stats):
        out.setdefault(labels[s], []).append(stats[s] if cols is None else stats[s].genes(cols))
    return {g: combine(v) for g, v in out.items()}


def fit_ridge(est: Any, stats: Mapping[str, SuffStats], group_of: Mapping[str, str],
              cols: Sequence[int] | None = None):
    """Fit an unfitted RidgeCVHead ``est`` from per-sample statistics, grouped as the in-memory path groups."""
    return solve(group_stats(stats, group_of, cols), est)


def predict_chunks(est: Any, fs: Any, ids: Sequence[str], layout: Mapping[str, Any], *,
                   chunk_rows: int | None = None, precision: str = "float64") -> np.ndarray:
    """``est.predict`` over row chunks of the inputs of ``ids`` (float32 (n, g)): X is never whole.

    Flat layouts stream :meth:`stfeat.features.FeatureSet.iter_flat`; token layouts (``attention``) stream
    :func:`stfeat.head_inputs.token_rows` (a chunk's rows and its neighbours' rows only).
    For ``ridge``, ``precision="float64"`` is ``RidgeCVHead.predict``'s own product (a spot's prediction
    does not depend on the rows it is batched with); ``"float32"`` is about 3x faster and agrees to float32
    rounding (~1e-6 relative), but its last bits depend on where a row falls in the BLAS blocks.
    """
    from stfeat.features import CHUNK_ROWS

    cr = int(chunk_rows or CHUNK_ROWS)
    n = sum(fs.samples[s].n_spots for s in ids)
    if layout.get("kind") == "tokens":
        chunks = (_token_chunk(fs.samples[s], fs.scales, a, cr, layout) for s in ids
                  for a in range(0, fs.samples[s].n_spots, cr))
    else:
        chunks = (X for _, _, X in fs.iter_flat(ids, chunk_rows=cr, reuse_buffer=True,
                                                neighbor_mean=bool(layout.get("neighbor_mean")),
                                                k=int(layout.get("k_neighbors", 8))))
    return _predict_stream(est, chunks, n, precision)


def predict_sample(est: Any, sf: Any, layout: Mapping[str, Any], *, chunk_rows: int | None = None,
                   precision: str = "float64") -> np.ndarray:
    """``est``'s predictions (float32 (n, g)) for one sample (:class:`stfeat.features.SampleFeatures`) in row
    chunks of its inputs under ``layout`` (flat without ``neighbor_mean``, or tokens; standardised per slide
    when ``layout["standardize"]`` says so)."""
    from stfeat.features import CHUNK_ROWS

    if layout.get("neighbor_mean"):
        raise ValueError("predict_sample needs a layout without neighbor_mean")
    cr = int(chunk_rows or CHUNK_ROWS)
    scales = list(layout["scales"])
    std = layout.get("standardize", "none")
    if layout.get("kind") == "tokens":
        chunks = (_token_chunk(sf, scales, a, cr, layout) for a in range(0, sf.n_spots, cr))
    else:
        buf = np.empty((min(cr, max(sf.n_spots, 1)), sum(sf.features[s].shape[1] for s in scales)), np.float32)
        chunks = (sf.flat_rows(scales, a, a + cr, out=buf[:min(cr, sf.n_spots - a)], standardize=std)
                  for a in range(0, sf.n_spots, cr))
    return _predict_stream(est, chunks, sf.n_spots, precision)


def _token_chunk(sf: Any, scales: Sequence[str], a: int, cr: int, layout: Mapping[str, Any]) -> dict:
    from stfeat.head_inputs import token_rows

    t = token_rows(sf, scales, a, a + cr, k=int(layout.get("k_neighbors", 8)),
                   neighbor_scale=layout.get("neighbor_scale"), standardize=layout.get("standardize", "none"))
    b = a + len(t["X"])
    return {**t, "coords_um": sf.coords_um[a:b], "sample_ids": np.full(b - a, sf.sample_id, dtype=object)}


def _predict_stream(est: Any, chunks: Any, n: int, precision: str) -> np.ndarray:
    """Predictions of ``chunks`` (flat X arrays, or token input dicts) into one float32 (n, g) array."""
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64'; got {precision!r}")
    from stfeat.estimators import predict_estimator
    from stfeat.heads.ridge import RidgeCVHead

    out, at, buf = None, 0, None
    ridge = type(est) is RidgeCVHead
    dt = np.dtype(precision)
    coef = np.ascontiguousarray(np.asarray(est.coef_, dt).T) if ridge else None
    for X in chunks:
        if isinstance(X, dict):
            P = predict_estimator(est, X)
        elif ridge:  # RidgeCVHead.predict's float64 product, into reused buffers
            if X.shape[1] != coef.shape[0]:
                est._check_x(X[:1])  # raises, naming the mismatch
            if dt == np.float32:
                P = X @ coef
                P += est.intercept_.astype(np.float32)
            else:
                if buf is None or len(buf) < len(X):
                    buf = np.empty(X.shape, np.float64)
                B = buf[:len(X)]
                B[...] = X
                P = (B @ coef + est.intercept_).astype(np.float32)
        else:
            P = np.asarray(est.predict(X), dtype=np.float32).reshape(len(X), -1)
        if out is None:
            out = np.empty((n, P.shape[1]), np.float32)
        out[at:at + len(P)] = P
        at += len(P)
    return out if out is not None else np.zeros((0, 0), np.float32)


def use_suffstats(est: Any, fs: Any, layout: Mapping[str, Any], option: bool | None) -> bool:
    """Whether a fit goes through statistics: ``option`` True/False, or (None) a ridge head on lazy features."""
    from stfeat.errors import InputError
    from stfeat.heads.ridge import RidgeCVHead

    is_ridge = type(est) is RidgeCVHead and layout.get("kind") == "flat"
    if option:
        if not is_ridge:
            raise InputError(None, f"suffstats=True needs the 'ridge' head on flat inputs, not {type(est).__name__}.",
                             "use head='ridge', or suffstats=None.")
        return True
    if option is None:
        return is_ridge and fs.is_lazy
    return False


def use_mlp_chunks(est: Any, fs: Any, layout: Mapping[str, Any]) -> bool:
    """Whether an mlp trains from row chunks: the ``mlp`` head on flat inputs of lazy features."""
    from stfeat.heads.mlp import MLPHead

    return type(est) is MLPHead and layout.get("kind") == "flat" and not layout.get("neighbor_mean") and fs.is_lazy


__all__ = ["featureset_stats", "group_stats", "fit_ridge", "predict_chunks", "predict_sample", "use_suffstats",
           "use_mlp_chunks",
           "stats_key"]
