"""FeatureSet: cached features of many samples, aligned to their spots, ready for the heads.

For each sample it holds the features of the chosen scales (float32; caches may store float16), the
spot coordinates in micrometres, the patient (or, without patient ids, the section as the group) and
a spatial neighbour graph. From these it builds

* ``X`` for flat heads (:meth:`FeatureSet.flat`): the chosen scales concatenated, optionally followed
  by the mean of the same concatenation over the spot's k nearest neighbours;
* token tensors for the attention head (:meth:`FeatureSet.tokens`): per spot, one token per own
  scale, then one token per neighbour (the neighbour's features at ``neighbor_scale``, by default the
  smallest chosen scale), with offsets in micrometres (``rel_pos``), a token-type id per position and
  a padding mask (True = padding: samples with fewer than k+1 spots).

Neighbours never cross samples. They come from the cache when it holds at least k of them, and are
recomputed from the coordinates in micrometres otherwise.

Per-slide standardisation (``standardize="slide"``): see :mod:`stfeat.standardize`.

Large samples (Visium HD: ~600k bins) are read lazily: when a sample's chosen scales would take more
than :data:`LAZY_THRESHOLD_BYTES` as float32 (or when ``lazy=True`` is asked for), its features are
:class:`stfeat.cache.LazyRows` views of the HDF5 datasets instead of arrays, and heads that scale
read them in row chunks (:meth:`FeatureSet.iter_flat`; ridge through :mod:`stfeat.suffstats`).
``np.asarray`` of a lazy view, :meth:`FeatureSet.flat` and :meth:`FeatureSet.tokens` still work and
read everything, as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from stfeat._cache_lazy import LAZY_THRESHOLD_BYTES, lazy_threshold  # noqa: F401 - re-exported
from stfeat.cache import scale_name  # noqa: F401 - re-exported: the one spelling of scale names
from stfeat.errors import InputError
from stfeat.standardize import STANDARDIZE, apply_inplace, check_standardize  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: rows per chunk handed to heads by :meth:`FeatureSet.iter_flat` (3,072 float32 features: 200 MB)
CHUNK_ROWS = 16384


def cache_file(cache_dir: str | Path, encoder: str, sample_id: str) -> Path:
    """Where stage one writes the cache of ``sample_id`` for ``encoder`` (``stfeat.cache.cache_path``)."""
    from stfeat.cache import cache_path, encoder_tag

    return Path(cache_path(cache_dir, encoder_tag(encoder), sample_id))


@dataclass
class SampleFeatures:
    """Features of one sample, one row per spot, in the sample's barcode order.

    Attributes
    ----------
    features
        Scale name (``f"{um:g}"``) -> (n, d) float32, or a :class:`stfeat.cache.LazyRows` view of the
        cache (read on demand; ``np.asarray`` reads it all) for a sample loaded lazily.
    neighbors, neighbor_dist_um
        (n, k) nearest other spots of the same sample (-1 = none) and their distances, or None.
    tissue_fraction
        Scale name -> (n,) float32 tissue fraction of each spot's crop (:mod:`stfeat.views`; NaN: not
        measured); empty for caches written before it was recorded.
    """

    sample_id: str
    patient: str | None
    barcodes: np.ndarray
    coords_px: np.ndarray
    um_per_px: float
    features: dict[str, np.ndarray]
    neighbors: np.ndarray | None = None
    neighbor_dist_um: np.ndarray | None = None
    source: Path | None = None
    attrs: dict = field(default_factory=dict)
    tissue_fraction: dict = field(default_factory=dict)
    #: the sample's counts (:class:`stfeat.targets.Expression`) and its :class:`stfeat.io.Sample`, when loaded
    expression: Any = None
    sample: Any = None
    #: scale -> (mean, std) to standardise with instead of this sample's own statistics (``standardize="slide"``);
    #: grid predictions set it to the measured spots' statistics
    standardize_stats: dict | None = None
    #: the cache-file row of each row (None: file order), for :meth:`patch_tokens`
    token_rows: np.ndarray | None = None
    #: scale -> (mean, std) of this sample's own features, once computed (not part of its identity)
    _own_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_spots(self) -> int:
        return int(len(self.barcodes))

    @property
    def is_lazy(self) -> bool:
        """True when the features stay on disk (:class:`stfeat.cache.LazyRows`)."""
        return any(not isinstance(v, np.ndarray) for v in self.features.values())

    def flat_rows(self, scales: Sequence[str], start: int, stop: int, out: np.ndarray | None = None,
                  standardize: str = "none") -> np.ndarray:
        """Rows ``start:stop`` of the scales concatenated, (m, d * len(scales)) float32 (into ``out`` if given),
        standardised per slide under ``standardize="slide"`` (:meth:`standardizer`; in float32, in place)."""
        start, stop = max(0, int(start)), min(self.n_spots, int(stop))
        widths = [self.features[s].shape[1] for s in scales]
        std = self.standardizer(scales, standardize)
        if out is None:
            out = np.empty((max(0, stop - start), sum(widths)), np.float32)
        at = 0
        for s, w in zip(scales, widths):
            v = self.features[s]
            blk = out[:, at:at + w]
            if hasattr(v, "rows"):
                v.rows(start, stop, out=blk)
            else:
                blk[...] = v[start:stop]
            if std is not None:
                apply_inplace(blk, std[s])
            at += w
        return out

    @property
    def token_grid(self) -> int:
        """G of the patch tokens its cache holds (``extract --tokens G``; read them with
        :func:`stfeat.patch_tokens.sample_tokens`), 0 when it holds none."""
        return int(self.attrs.get("tokens_grid", 0) or 0) if self.source is not None else 0

    @property
    def coords_um(self) -> np.ndarray:
        return np.asarray(self.coords_px, dtype=np.float64) * float(self.um_per_px)

    @classmethod
    def from_cache(cls, path: str | Path, *, scales: Sequence[str] | None = None, patient: str | None = None,
                   sample_id: str | None = None, lazy: bool | None = None) -> "SampleFeatures":
        """Read a stage-one cache file (only the chosen scales) via ``stfeat.cache.read_cache``.

        ``lazy``: True = features stay on disk as :class:`stfeat.cache.LazyRows`; False = read as float32
        arrays; None = lazy when they would take more than :func:`lazy_threshold` bytes.
        """
        from stfeat.cache import feature_bytes, read_cache, read_cache_lazy

        path = Path(path)
        names = None if scales is None else [scale_name(s) for s in scales]
        try:
            if lazy is None:
                lazy = feature_bytes(path, names) > lazy_threshold()
            reader = read_cache_lazy if lazy else read_cache
            data = reader(path, scales=None if names is None else [float(s) for s in names],
                          sample_id=sample_id)
        except (OSError, KeyError) as exc:
            raise InputError(path, f"cannot read the feature cache ({exc}).",
                             "re-run `stfeat extract` for this sample (add --overwrite).") from None
        feats = {scale_name(k): (v if lazy else np.asarray(v, dtype=np.float32)) for k, v in data.features.items()}
        if names is not None:
            absent = [s for s in names if s not in feats]
            if absent:
                raise InputError(path, f"the cache has no features at scale(s) {absent} um "
                                 f"(it has {sorted(feats, key=float)}).",
                                 "extract them with `stfeat extract ... --scales-um` or choose cached scales.")
            feats = {s: feats[s] for s in names}
        attrs = dict(data.attrs)
        um = attrs.get("um_per_px")
        if um is None:
            raise InputError(path, "the cache records no um_per_px.", "re-run `stfeat extract` for this sample.")
        return cls(
            sample_id=str(sample_id or attrs.get("sample_id") or path.stem),
            patient=patient if patient is not None else (attrs.get("patient") or None),
            barcodes=np.asarray(data.barcodes).astype(str),
            coords_px=np.asarray(data.coords, dtype=np.float64),
            um_per_px=float(um),
            features=feats,
            neighbors=None if data.neighbors is None else np.asarray(data.neighbors, dtype=np.int64),
            neighbor_dist_um=None if data.neighbor_dist_um is None else np.asarray(data.neighbor_dist_um, np.float32),
            source=path,
            attrs=attrs,
            tissue_fraction={scale_name(k): v for k, v in data.tissue_fraction.items()
                             if names is None or scale_name(k) in names},
        )

    def aligned_to(self, barcodes: Sequence[str], *, sample_path: str | Path | None = None) -> "SampleFeatures":
        """Rows reordered to ``barcodes`` (the sample's spots); InputError if the spot sets differ."""
        barcodes = np.asarray(barcodes).astype(str)
        if len(barcodes) == len(self.barcodes) and np.array_equal(barcodes, self.barcodes):
            return self
        mine = np.asarray(self.barcodes).astype(str)
        sorter = np.argsort(mine, kind="stable")
        at = np.clip(np.searchsorted(mine, barcodes, sorter=sorter), 0, max(len(mine) - 1, 0))
        order = sorter[at] if len(mine) else np.zeros(0, np.int64)
        found = (mine[order] == barcodes) if len(mine) else np.zeros(len(barcodes), bool)
        if not found.all() or len(barcodes) != len(mine) or len(np.unique(order)) != len(order):
            missing = list(barcodes[~found])
            extra = len(set(mine.tolist()) - set(barcodes.tolist()))
            raise InputError(
                self.source,
                f"its spots do not match the sample's ({sample_path}): {len(missing)} sample barcodes are not in "
                f"the cache (e.g. {missing[:3]}), {extra} cached barcodes are not in the sample.",
                f"re-extract with `stfeat extract {sample_path or 'SAMPLE'} ... --overwrite` so cache and sample agree.")
        order = order.astype(np.int64)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        nb = None
        if self.neighbors is not None:
            nb = self.neighbors[order]
            nb = np.where(nb >= 0, inv[np.clip(nb, 0, None)], -1)
        return SampleFeatures(
            sample_id=self.sample_id, patient=self.patient, barcodes=barcodes, coords_px=self.coords_px[order],
            um_per_px=self.um_per_px, features={k: v[order] for k, v in self.features.items()}, neighbors=nb,
            neighbor_dist_um=None if self.neighbor_dist_um is None else self.neighbor_dist_um[order],
            source=self.source, attrs=self.attrs, expression=self.expression, sample=self.sample,
            tissue_fraction={k: v[order] for k, v in self.tissue_fraction.items()},
            standardize_stats=self.standardize_stats,
            token_rows=order if self.token_rows is None else self.token_rows[order])

    def slide_stats(self, scales: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Scale -> (mean, std) (float64, over this sample's rows; std 1 for a constant feature)."""
        from stfeat.heads._base import standardize_fit

        if self.n_spots == 0:
            raise InputError(self.source, f"sample {self.sample_id} has no spots to standardise over.",
                             "give a sample with spots, or standardize='none'.")
        for s in scales:  # a lazy view is read in row blocks, never whole
            if s not in self._own_stats:
                v = self.features[s]
                self._own_stats[s] = standardize_fit(np.asarray(v, np.float32) if isinstance(v, np.ndarray) else v)
        return {s: self._own_stats[s] for s in scales}

    def standardizer(self, scales: Sequence[str], standardize: str = "none"
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Scale -> (mean, std) that ``standardize`` applies to ``scales`` (None for ``"none"``):
        :attr:`standardize_stats` where given, else the sample's own (:meth:`slide_stats`)."""
        if check_standardize(standardize) == "none":
            return None
        scales = list(dict.fromkeys(scales))
        stats = self.standardize_stats or {}
        missing = [s for s in scales if s not in stats]
        stats = {**stats, **(self.slide_stats(missing) if missing else {})}
        return {s: stats[s] for s in scales}

    def standardized(self, scales: Sequence[str], standardize: str = "none") -> dict[str, np.ndarray]:
        """Scale -> (n, d) float32 features of ``scales`` under ``standardize`` (see the module docstring)."""
        scales = list(dict.fromkeys(scales))
        stats = self.standardizer(scales, standardize)
        if stats is None:
            return {s: np.asarray(self.features[s], np.float32) for s in scales}
        return {s: ((np.asarray(self.features[s], np.float32) - stats[s][0]) / stats[s][1]).astype(np.float32)
                for s in scales}

    def neighbor_graph(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(idx, dist_um) of the k nearest other spots: the cached graph if it has k, else recomputed."""
        if k <= 0:
            return np.zeros((self.n_spots, 0), np.int64), np.zeros((self.n_spots, 0), np.float32)
        if self.neighbors is not None and self.neighbors.shape[1] >= k:
            d = self.neighbor_dist_um
            if d is None:
                d = np.linalg.norm(self.coords_um[self.neighbors[:, :k]] - self.coords_um[:, None], axis=-1)
            return self.neighbors[:, :k], np.asarray(d[:, :k], np.float32)
        from stfeat.neighbors import spatial_neighbors

        idx, dist = spatial_neighbors(self.coords_um, k)
        self.neighbors, self.neighbor_dist_um = idx, dist
        return idx, dist


class FeatureSet:
    """Features of several samples for stage two.

    Parameters
    ----------
    samples
        One :class:`SampleFeatures` per sample, rows aligned to the sample's expression.
    scales
        Scale names to use, in order (default: those of the first sample, ascending).
    standardize
        ``"none"`` or ``"slide"``: centre and scale each sample's features with its own statistics in
        :meth:`flat` and :meth:`tokens` (see the module docstring; :meth:`with_standardize` changes it).
    """

    def __init__(self, samples: Sequence[SampleFeatures], scales: Sequence[str | float] | None = None, *,
                 encoder: str | None = None, cache_dir: str | Path | None = None, source: str | None = None,
                 standardize: str = "none") -> None:
        self.encoder = encoder
        #: per-slide standardisation of the heads' inputs: ``none`` or ``slide`` (module docstring)
        self.standardize = check_standardize(standardize)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.source = source  # the path the samples came from, quoted in hints
        self._targets: dict[tuple, np.ndarray] = {}
        if not samples:
            raise ValueError("FeatureSet needs at least one sample")
        self.samples = {s.sample_id: s for s in samples}
        if len(self.samples) != len(samples):
            raise ValueError("duplicated sample ids in FeatureSet")
        first = samples[0]
        self.scales = [scale_name(s) for s in scales] if scales else sorted(first.features, key=float)
        dims = set()
        for s in samples:
            for sc in self.scales:
                if sc not in s.features:
                    raise InputError(s.source, f"no features at scale {sc} um.", "extract that scale or drop it.")
                dims.add(s.features[sc].shape[1])
        if len(dims) != 1:
            raise InputError(None, f"feature widths differ across samples/scales: {sorted(dims)}.",
                             "use caches of one encoder configuration.")
        self.dim = dims.pop()
        patients = [s.patient for s in samples]
        self.group_kind = "patient" if any(p not in (None, "") for p in patients) else "section"
        if self.group_kind == "section":
            log.warning("no patient ids: samples are grouped by section (sample id)")

    @classmethod
    def from_caches(cls, samples: Sequence[tuple[str, str | None, Path, Sequence[str], str | Path | None]], *,
                    scales: Sequence[str | float] | None = None, lazy: bool | None = None) -> "FeatureSet":
        """Load caches: one ``(sample_id, patient, cache_path, sample_barcodes, sample_path)`` per sample.

        The caches must agree on the encoder configuration (``stfeat.cache.check_compatible``); without
        ``scales``, the scales every cache holds are used (a message names any left out).
        """
        from stfeat.cache import check_compatible, read_attrs

        scales = check_compatible([(sid, Path(path), read_attrs(path)) for sid, _, path, _, _ in samples],
                                  scales)
        out = []
        for sid, patient, path, barcodes, spath in samples:
            sf = SampleFeatures.from_cache(path, scales=scales, patient=patient, sample_id=sid, lazy=lazy)
            out.append(sf.aligned_to(barcodes, sample_path=spath))
        return cls(out, scales=scales)

    @classmethod
    def load(cls, samples: Any, *, encoder: str, cache_dir: str | Path,
             scales_um: Sequence[float | str] | None = None, standardize: str = "none",
             lazy: bool | None = None) -> "FeatureSet":
        """The cached features of ``samples`` for ``encoder``, with their counts for stage two.

        ``samples`` is anything :func:`stfeat.io.as_samples` takes. A missing cache is an InputError
        naming the ``stfeat extract`` command to run. ``standardize``: see :class:`FeatureSet`; ``lazy``: see
        :meth:`SampleFeatures.from_cache`.
        """
        check_standardize(standardize)
        import os

        from stfeat.io import as_samples
        from stfeat.targets import Expression

        source = str(samples) if isinstance(samples, (str, os.PathLike)) else None
        loaded = as_samples(samples)
        paths = {s.sample_id: cache_file(cache_dir, encoder, s.sample_id) for s in loaded}
        missing = [s for s in loaded if not paths[s.sample_id].exists()]
        if missing:
            target = source or " ".join(str(s.meta.get("source_path", "")) for s in missing) or "SAMPLES"
            sc = "" if not scales_um else " --scales-um " + ",".join(f"{float(x):g}" for x in scales_um)
            raise InputError(paths[missing[0].sample_id], f"no feature cache for encoder {encoder!r} and sample(s) "
                             f"{[s.sample_id for s in missing]} in {cache_dir}.",
                             f"run `stfeat extract {target} --encoder {encoder} --cache-dir {cache_dir}{sc}` first.")
        from stfeat.cache import check_compatible, read_attrs

        scales_um = check_compatible([(s.sample_id, paths[s.sample_id], read_attrs(paths[s.sample_id]))
                                      for s in loaded], scales_um)
        out = []
        for s in loaded:
            sf = SampleFeatures.from_cache(paths[s.sample_id], scales=scales_um, patient=s.patient,
                                           sample_id=s.sample_id, lazy=lazy)
            sf = sf.aligned_to(s.barcodes, sample_path=s.meta.get("source_path"))
            sf.expression, sf.sample = Expression.from_sample(s), s
            out.append(sf)
        return cls(out, scales=scales_um, encoder=encoder, cache_dir=cache_dir, source=source, standardize=standardize)

    def subset(self, ids: Sequence[str]) -> "FeatureSet":
        """The same features for some of the samples (e.g. one patient)."""
        return FeatureSet([self.samples[s] for s in ids], scales=self.scales, encoder=self.encoder,
                          cache_dir=self.cache_dir, source=self.source, standardize=self.standardize)

    def with_standardize(self, standardize: str) -> "FeatureSet":
        """The same samples (shared, not copied) with another per-slide standardisation mode."""
        if check_standardize(standardize) == self.standardize:
            return self
        out = self.subset(self.sample_ids)
        out.standardize = standardize
        out._targets = self._targets
        out.group_kind = self.group_kind
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        n = sum(s.n_spots for s in self.samples.values())
        return (f"FeatureSet(encoder={self.encoder!r}, {len(self)} samples, {n} spots, scales_um={self.scales}, "
                f"dim={self.dim}, grouped by {self.group_kind}"
                + (f", standardize={self.standardize!r})" if self.standardize != "none" else ")"))

    @property
    def provenance(self) -> dict[str, str]:
        """What identifies these features: encoder, weights, config hash, scales (from the first cache)."""
        attrs = self.samples[self.sample_ids[0]].attrs
        return {"encoder": str(self.encoder or attrs.get("encoder", "")),
                "weights_id": str(attrs.get("weights_id", "")),
                "encoder_config_hash": str(attrs.get("config_hash", "")), "scales_um": ",".join(self.scales),
                "standardize": self.standardize}

    def expression(self, sample_id: str) -> Any:
        e = self.samples[sample_id].expression
        if e is None:
            raise InputError(self.samples[sample_id].source, f"sample {sample_id} was loaded without its counts.",
                             "build the FeatureSet with FeatureSet.load(samples, ...) or st.extract(...).")
        return e

    def targets(self, sample_id: str, genes: Sequence[str], transform: str = "log1p_cp10k") -> np.ndarray:
        """Target matrix (spots x genes) of one sample under ``transform`` (memoised)."""
        from stfeat.targets import target_matrix

        key = (sample_id, tuple(genes), transform)
        if key not in self._targets:
            self._targets[key] = target_matrix(self.expression(sample_id), genes, transform)
        return self._targets[key]

    def labels(self, sample_id: str, key: str = "region") -> np.ndarray | None:
        """Per-spot region labels of one sample (``obs[key]`` of its :class:`stfeat.io.Sample`, e.g. the
        pathologist's labels the legacy-ST reader attaches), in the features' spot order; None = no labels.
        Unlabelled spots are None."""
        sf = self.samples[sample_id]
        s = sf.sample
        if s is None or key not in s.adata.obs.columns:
            return None
        col = s.adata.obs[key]
        col = col.astype(object).reindex(np.asarray(sf.barcodes).astype(str))
        return np.array([None if (v is None or v != v or v == "") else str(v) for v in col], dtype=object)

    # ------------------------------------------------------------------------------ bookkeeping
    @property
    def sample_ids(self) -> list[str]:
        return list(self.samples)

    def group_of(self, sample_id: str) -> str:
        p = self.samples[sample_id].patient
        return str(p) if (self.group_kind == "patient" and p not in (None, "")) else sample_id

    def spot_samples(self, ids: Sequence[str]) -> np.ndarray:
        """Sample id of every row of the matrices built for ``ids``."""
        return np.concatenate([np.full(self.samples[s].n_spots, s, dtype=object) for s in ids])

    def coords_px(self, ids: Sequence[str]) -> np.ndarray:
        return np.concatenate([self.samples[s].coords_px for s in ids])

    # ------------------------------------------------------------------------------ matrices
    def flat(self, ids: Sequence[str], *, neighbor_mean: bool = False, k: int = 8) -> np.ndarray:
        """X (n, d * n_scales [* 2]) float32 for flat heads: scales concatenated [+ neighbour mean]."""
        from stfeat.head_inputs import flat_features

        return np.concatenate([flat_features(self.samples[s], self.scales, neighbor_mean=neighbor_mean, k=k,
                                             standardize=self.standardize) for s in ids])

    @property
    def is_lazy(self) -> bool:
        """True when any sample's features stay on disk."""
        return any(s.is_lazy for s in self.samples.values())

    def iter_flat(self, ids: Sequence[str], *, chunk_rows: int = CHUNK_ROWS, neighbor_mean: bool = False,
                  k: int = 8, reuse_buffer: bool = False) -> Iterator[tuple[str, int, np.ndarray]]:
        """Row chunks of :meth:`flat`: ``(sample_id, first row within that sample, X chunk)``, in order.

        Every row of every sample of ``ids`` comes exactly once; a chunk never spans two samples. A lazy
        sample is read ``chunk_rows`` rows at a time. ``neighbor_mean`` needs a sample's other rows, so
        it is only offered for samples held in memory. ``reuse_buffer``: every chunk is written into one
        buffer (faster: no fresh pages per chunk), so a chunk is only valid until the next is asked for.
        """
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1; got {chunk_rows}")
        buf = None
        for s in ids:
            sf = self.samples[s]
            if neighbor_mean:
                if sf.is_lazy:
                    raise InputError(sf.source, "neighbor_mean needs the whole sample in memory, but its features "
                                     "are read lazily (too large).",
                                     "use neighbor_mean=False, or load with lazy=False (enough memory needed).")
                from stfeat.head_inputs import flat_features

                X = flat_features(sf, self.scales, neighbor_mean=True, k=k, standardize=self.standardize)
                for a in range(0, sf.n_spots, int(chunk_rows)):
                    yield s, a, X[a:a + int(chunk_rows)]
                continue
            for a in range(0, sf.n_spots, int(chunk_rows)):
                m = min(int(chunk_rows), sf.n_spots - a)
                if reuse_buffer:
                    if buf is None:
                        buf = np.empty((int(chunk_rows), self.dim * len(self.scales)), np.float32)
                    yield s, a, sf.flat_rows(self.scales, a, a + m, out=buf[:m], standardize=self.standardize)
                else:
                    yield s, a, sf.flat_rows(self.scales, a, a + m, standardize=self.standardize)

    def tokens(self, ids: Sequence[str], *, k: int = 8, neighbor_scale: str | None = None) -> dict[str, np.ndarray]:
        """Token tensors for the attention head; see :func:`stfeat.head_inputs.token_features`."""
        from stfeat.head_inputs import token_features

        parts = [token_features(self.samples[s], self.scales, k=k, neighbor_scale=neighbor_scale,
                                standardize=self.standardize) for s in ids]
        return {
            "X": np.concatenate([p["X"] for p in parts]),
            "rel_pos": np.concatenate([p["rel_pos"] for p in parts]),
            "mask": np.concatenate([p["mask"] for p in parts]),
            "token_type": parts[0]["token_type"],
        }
