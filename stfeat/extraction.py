"""Stage one: multi-scale crops of every spot -> batched encoder -> resumable HDF5 cache.

Pipeline per sample::

    DataLoader workers: Slide.read_regions for every scale of a block of spots -> uint8 (b, S, px, px, 3)
    main thread:        pinned uint8 -> device (non-blocking) -> Encoder (normalise on device, autocast)
    writer thread:      rows -> /features/{scale}, flags -> /done/{scale}, flush  (see stfeat.cache)

Blocks are fixed ranges of ``batch_size`` spots (the batch size is stored in the file and reused on
resume), so an interrupted run that is resumed computes exactly the batches a clean run computes and
writes identical embeddings. ``batch_size`` counts spots; one forward pass sees ``batch_size x
n_scales`` crops.

Sharding: ``shard=(i, n)`` (or ``"i/n"``, **0-based**: ``0/4`` .. ``3/4``) keeps samples ``i, i+n,
i+2n, ...`` of the list; without it, torchrun's ``RANK``/``WORLD_SIZE`` are used. Each rank writes its
own files; the per-file lock refuses any overlap.

This module plans the cache files, writes them and identifies the encoder; the crops, batching and
device loop live in :mod:`stfeat.batching` (its public names are re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from stfeat import _constants as K
from stfeat import cache as C
from stfeat.batching import (
    CPU_BATCH_SIZE,
    DEFAULT_SCALES_UM,
    CropDataset,
    _bar,
    _blocks,
    _build_encoder,
    _resolve_device,
    auto_batch_size,
    default_num_workers,
    extract_points,
    iter_features,
)
from stfeat.errors import InputError, ResourceError, StfeatError

if TYPE_CHECKING:  # pragma: no cover
    from stfeat.encoders.base import Encoder

log = logging.getLogger(__name__)



@dataclass
class SampleResult:
    """What :func:`extract` did for one sample.

    ``status`` is "written" (new file), "resumed" (an interrupted file finished), "updated" (scales or
    neighbours added to a complete file) or "skipped" (already complete).
    """

    sample_id: str
    path: Path
    status: str
    n_spots: int
    n_computed: int
    seconds: float
    scales_um: list[float] = field(default_factory=list)
    n_views: int = 1  # crops per spot and scale through the encoder (stfeat.views): the cost factor

    def line(self) -> str:
        rate = f", {self.n_computed / self.seconds:.1f} spots/s" if self.n_computed and self.seconds > 0 else ""
        cost = f" x{self.n_views} views" if self.n_views > 1 else ""
        return (f"{self.sample_id}: {self.status}, {self.n_spots} spots "
                f"({self.n_computed} computed{cost}) in {self.seconds:.2f} s{rate} -> {self.path}")


from stfeat._cache_writer import _Writer  # noqa: E402 - the writer thread (kept out of this module)

from stfeat.identity import _Identity, encoder_identity  # noqa: E402 - encoder_identity is public here too
from stfeat._plan import _Plan, _plan, parse_shard  # noqa: E402


def _versions() -> dict[str, str]:
    import h5py
    import torch

    import stfeat

    try:
        import timm

        tv = timm.__version__
    except ImportError:  # pragma: no cover
        tv = ""
    return {"stfeat_version": stfeat.__version__, "torch_version": torch.__version__, "timm_version": tv,
            "h5py_version": h5py.__version__}


# ---------------------------------------------------------------- one sample
def _extract_one(ref: Any, sample: Any, final: Path, plan: _Plan, *, enc: "Encoder", ident: _Identity,
                 dtype: np.dtype, k: int, batch_size: int | None, num_workers: int, device: str,
                 um_override: float | None, progress: bool, callback: Callable | None,
                 auto_bs: Callable[[], int], mode: str = "crop", tile_px: int | None = None,
                 views: Any = None) -> tuple[str, int]:
    import h5py

    from stfeat import views as V

    views = views if views is not None else V.ViewSpec()
    since = [time.perf_counter()]

    from stfeat.neighbors import spatial_neighbors

    part = C.partial_path(final)
    if sample.slide is None:
        raise InputError(getattr(ref, "path", None), f"sample {sample.sample_id} has no H&E image.",
                         "give the image path: --image PATH (image=) for one sample, or an `image` column in "
                         "the manifest.")
    um = float(um_override if um_override is not None else sample.um_per_px)
    coords = np.asarray(sample.coords, dtype=np.float64)
    barcodes = np.asarray(sample.barcodes, dtype=str)
    n = len(barcodes)
    status = {"new": "written", "resume": "resumed", "update": "updated"}[plan.action]
    if plan.action == "new":
        for p in (final, part):
            p.unlink(missing_ok=True)
    elif plan.action == "update":
        os.replace(final, part)  # a complete file is modified only under the partial name
    final.parent.mkdir(parents=True, exist_ok=True)
    f = None
    if part.exists():
        try:
            f = h5py.File(part, "a")
            stored = f["barcodes"].asstr()[...]
            if len(stored) != n or not np.array_equal(stored, barcodes):
                f.close()
                raise InputError(part, f"holds {len(stored)} spots that differ from the sample's {n} spots "
                                 "(the input changed since this cache was started).",
                                 "pass --overwrite to recompute it.")
        except (OSError, KeyError) as exc:
            log.warning("%s cannot be resumed (%s): starting it again", part, exc)
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
            f = None
            part.unlink()
            status = "written"
    scales = list(plan.scales)
    if f is not None:
        if um_override is None:  # resume with the crops' original geometry, if the sample still has it
            stored = float(f.attrs.get("um_per_px", um))
            if abs(stored - um) > 1e-6 * um:
                f.close()
                raise InputError(part, f"was started at {stored:.6g} um/px, but the sample now reads {um:.6g} um/px "
                                 f"({sample.um_per_px_source}); its scales would mix two geometries.",
                                 "pass --overwrite to recompute it, or give --um-per-px explicitly.")
            um = stored
        # an interrupted run may have started scales that were not asked for this time: finish them too
        scales = sorted(set(scales) | {float(x) for x in f["features"].keys()})
    bs = int(batch_size or plan.batch_size or auto_bs())
    from stfeat._faults import check_room, expected_bytes

    try:
        check_room(part, expected_bytes(n, int(enc.embed_dim), len(scales), dtype.itemsize, k),
                   part.stat().st_size if part.exists() else 0)
    except ResourceError:
        if f is not None:
            f.close()
        raise
    if f is None:
        try:
            f = h5py.File(part, "w")
            C.create_datasets(f, barcodes=barcodes, coords=coords)
        except (OSError, RuntimeError) as exc:
            from stfeat._faults import disk_error, is_write_failure

            if not is_write_failure(exc):
                raise
            raise disk_error(part, exc) from None
        slide_path = getattr(sample.slide, "path", "")
        C.set_attrs(f, {
            "schema_version": K.CACHE_SCHEMA_VERSION, "complete": False, "created": C.now_iso(), "completed": "",
            "encoder": ident.name, "encoder_tag": ident.tag, "encoder_identity": ident.identity,
            "weights_id": ident.weights_id, "config_hash": ident.hash, "um_per_px": um,
            "um_per_px_source": "user" if um_override is not None else sample.um_per_px_source,
            "scales_um": [], "patch_px": int(enc.spec.input_px), "embed_dim": int(enc.embed_dim),
            "dtype": str(dtype), "batch_size": bs, "k_neighbors": 0, "sample_id": sample.sample_id,
            "patient": sample.patient or "", "n_spots": n, "image_path": str(slide_path), **_versions(),
            "views": views.to_attrs(), "n_views": views.n_views, "extract_seconds": 0.0,
        })
    V.check_resolution(sample.sample_id, scales, um, int(enc.spec.input_px))
    try:
        C.set_attrs(f, {"complete": False, "completed": ""})
        for s in scales:
            if C.scale_name(s) not in f["features"]:
                C.add_scale(f, s, n=n, dim=int(enc.embed_dim), dtype=dtype, chunk_rows=max(bs, 64))
            C.require_tissue(f, C.scale_name(s), n)
        if views.tokens:  # the pooled patch-token grid of every crop (stfeat.patch_tokens)
            from stfeat import patch_tokens as PT

            tdim = int(f.attrs.get("tokens_dim", 0)) or PT.token_dim(enc, views.tokens)
            for s in scales:
                PT.add_tokens(f, C.scale_name(s), n=n, grid=int(views.tokens), dim=tdim)
            C.set_attrs(f, {"tokens_grid": int(views.tokens), "tokens_dim": tdim, "tokens_source": PT.source_of(enc)})
        if k > 0 and int(f.attrs.get("k_neighbors", 0)) != k:
            idx, dist = spatial_neighbors(coords * um, k)
            C.write_neighbors(f, idx, dist)
            C.set_attrs(f, {"k_neighbors": k})
        elif k == 0 and "neighbors" in f:
            del f["neighbors"]
            C.set_attrs(f, {"k_neighbors": 0})
        f.flush()
        masks = C.done_masks(f)
        # compute each scale that still has missing rows, block by block (fixed composition)
        todo_scales = [s for s in scales if not masks[C.scale_name(s)].all()]
        n_computed = 0
        from stfeat.dense import cache_mode, write_dense

        m = cache_mode(f, part, mode, coords * um, enc, masks)  # auto decides by density; recorded in attrs
        if todo_scales and m == "dense":
            n_computed, dstats = write_dense(f, sample.slide, coords, todo_scales, encoder=enc, um_per_px=um,
                                             dtype=dtype, tile_px=tile_px, callback=callback, sample_id=sample.sample_id)
            C.set_attrs(f, dstats.to_attrs())
        elif todo_scales:
            names = [C.scale_name(s) for s in todo_scales]
            need = np.zeros(n, bool)
            for s in names:
                need |= ~masks[s]
            blocks = [(a, b) for a, b in _blocks(n, bs) if need[a:b].any()]
            n_computed = sum(b - a for a, b in blocks)
            writer = _Writer(f, names, dtype)
            bar = _bar(n_computed, sample.sample_id, progress)
            done_spots = 0
            try:
                for a, b, feats, pads, tissue, toks in iter_features(
                        sample.slide, coords, encoder=enc, scales_um=todo_scales, um_per_px=um, batch_size=bs,
                        blocks=blocks, views=views, num_workers=num_workers, device=device):
                    writer.put(a, b, feats, pads, tissue, toks)
                    done_spots += b - a
                    bar.update(b - a)
                    if callback is not None:
                        callback(sample.sample_id, done_spots, n_computed)
            finally:
                writer.close()
                bar.close()
                if writer.error is None:
                    with contextlib.suppress(Exception):
                        V.add_seconds(f, since)  # counted also when interrupted: summed over resumes
            writer.check()
        V.add_seconds(f, since)
        C.finalize(f, scales_um=scales)
    except (OSError, RuntimeError, StfeatError) as exc:
        from stfeat._faults import abandon, disk_error, is_write_failure

        if not (is_write_failure(exc) or isinstance(exc, ResourceError)):
            raise
        abandon(f)  # closing an HDF5 file after a failed write crashes the process; leave it open
        f = None
        raise disk_error(part, exc) if not isinstance(exc, ResourceError) else exc from None
    finally:
        if f is not None:
            f.close()
    os.replace(part, final)
    return status, n_computed


def _load_sample(ref: Any) -> Any:
    """Load a sample and decode its image (JPEG -> shared memory map) off the main thread."""
    sample = ref.load()
    if getattr(sample, "slide", None) is not None and hasattr(sample.slide, "load"):
        sample.slide.load()
    return sample


# ---------------------------------------------------------------- the public entry point
def extract_caches(
    samples: Any,
    *,
    encoder: "str | Encoder",
    weights: str | Path | None = None,
    scales_um: Sequence[float] = DEFAULT_SCALES_UM,
    cache_dir: str | Path | None = None,
    k_neighbors: int = 8,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    shard: str | tuple[int, int] | None = None,
    dtype: str = "float16",
    um_per_px: float | None = None,
    image: str | Path | None = None,
    pretrained: bool = True,
    progress: bool = False,
    on_sample: Callable[[SampleResult], None] | None = None,
    callback: Callable[[str, int, int], None] | None = None,
    mode: str = "auto",
    tile_px: int | None = None,
    stain_norm: str = "none",
    stain_reference: str | Path | None = None,
    tta: str = "none",
    tta_hed_jitter: float = 0.0,
    background: str = "keep",
    tokens: int = 0,
) -> list[Path]:
    """Extract multi-scale features of every spot of every sample into the feature cache (``stfeat extract``).

    Parameters
    ----------
    samples
        A path (sample folder, folder of samples or manifest, see ``stfeat.io.resolve_samples``), or a
        list of ``SampleRef`` / ``Sample`` objects.
    encoder
        Registry name (``"densenet121"``, ``"uni"``, ``"timm:NAME"``, ...) or a built ``Encoder``.
    weights
        Local weights file (its sha256 identifies the cache configuration).
    scales_um
        Fields of view in micrometres.
    cache_dir
        Root of the cache; default ``$STFEAT_CACHE_DIR`` or ``./stfeat_cache``. Files go to
        ``{cache_dir}/{encoder_tag}/{sample_id}.h5``.
    k_neighbors
        Spatial neighbours stored per spot (0: none).
    batch_size
        Spots per batch (a forward pass sees ``batch_size * len(scales_um)`` crops); default 32 on CPU,
        probed on CUDA; a resumed file reuses its stored batch size unless one is given.
    num_workers
        DataLoader decoding processes; default :func:`default_num_workers`.
    device
        "cpu", "cuda", "cuda:1"; default CUDA when available (``cuda:$LOCAL_RANK`` under torchrun).
    overwrite
        Recompute files that exist (complete or not).
    shard
        ``"i/n"`` or ``(i, n)``, 0-based; default from ``RANK``/``WORLD_SIZE``.
    dtype
        "float16" (default) or "float32" storage.
    um_per_px
        Override the samples' micrometres per pixel.
    image
        The H&E image of the ONE sample ``samples`` holds (an ``.h5ad``, Space Ranger ``outs/`` ...), overriding
        the one found (``--image``); an :class:`InputError` when ``samples`` holds several (give them a
        manifest's ``image`` column) or the file does not exist (see :func:`stfeat.io.with_image`).
    pretrained
        False: random weights (seeded; benchmarks).
    progress
        Show a tqdm bar (spots/s) per sample.
    on_sample
        Called with a :class:`SampleResult` as each sample finishes.
    callback
        Called as ``callback(sample_id, spots_done, spots_total)`` after each batch (raising aborts
        the run; the file stays resumable).
    mode
        "crop" (one forward per spot and scale), "dense" (one forward per tissue tile, features
        pooled from the token/feature map: :mod:`stfeat.dense`) or "auto" (dense when points are
        closer than 50 um, i.e. bins and cells, and the encoder has a map; crop for spots). The mode
        used and why are stored in the cache attrs (``extraction_mode``, ``extraction_mode_reason``).
    tile_px
        Dense mode: tile side in encoder pixels (default 6 windows for CNNs, 4 for ViTs).
    stain_norm, stain_reference, tta, tta_hed_jitter, background
        What the encoder sees (:mod:`stfeat.views`); non-plain views go to ``{cache_dir}/{encoder_tag}+{views}/``
        (e.g. ``densenet121+macenko+d8``), and such a variant name given as ``encoder`` sets them too.
    tokens
        Also store each crop's patch-token grid (ViT) or last feature map (CNN) pooled to ``tokens`` x ``tokens``
        (:mod:`stfeat.patch_tokens`; crop mode, a ``+tok{G}`` folder); 0 = none.

    Returns
    -------
    list of Path
        The cache file of every sample of this shard, in order.

    Raises
    ------
    InputError
        Bad samples, or an existing file written by another encoder configuration.
    CacheLockedError
        Another process is writing one of the files.
    """
    from concurrent.futures import ThreadPoolExecutor

    t_all = time.perf_counter()
    dt = C.feature_dtype(dtype)
    scales = sorted({float(s) for s in scales_um})
    if not scales or any(s <= 0 for s in scales):
        raise InputError(None, f"scales_um must be positive micrometres, got {list(scales_um)}.", "give e.g. 112, 224.")
    if k_neighbors < 0:
        raise InputError(None, f"k_neighbors must be >= 0, got {k_neighbors}.", "give 0 (none) or more.")
    root = Path(cache_dir if cache_dir is not None else os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))
    from stfeat.io import as_samples

    refs = as_samples(samples, lazy=True, um_per_px=um_per_px, image=image)
    rank, world = parse_shard(shard)
    refs = refs[rank::world]
    from stfeat.views import extraction_identity

    encoder, views, ident = extraction_identity(encoder, weights=weights, pretrained=pretrained, stain_norm=stain_norm,
                                                stain_reference=stain_reference, tta=tta,
                                                tta_hed_jitter=tta_hed_jitter, background=background, tokens=tokens)
    finals = [C.cache_path(root, ident.tag, r.sample_id) for r in refs]
    from stfeat.dense import MODES

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mode = views.check_mode(mode)
    plans = [_plan(p, ident, scales, dtype=dt, k=k_neighbors, um_per_px=um_per_px, overwrite=overwrite,
                   sample_id=r.sample_id, mode=mode) for p, r in zip(finals, refs)]
    results: list[SampleResult] = []

    def report(r: SampleResult) -> None:
        results.append(r)
        log.debug(r.line())
        if on_sample is not None:
            on_sample(r)

    work = [i for i, p in enumerate(plans) if p.action != "skip"]
    for i, p in enumerate(plans):
        if p.action == "skip":
            report(SampleResult(refs[i].sample_id, finals[i], "skipped", p.n_spots, 0,
                                time.perf_counter() - t_all, p.scales, views.n_views))
    if not work:
        return finals
    dev = _resolve_device(device)
    enc = _build_encoder(encoder, weights=weights, pretrained=pretrained, device=dev)
    workers = default_num_workers(dev) if num_workers is None else int(num_workers)
    probed: list[int] = []

    def auto_bs() -> int:  # probed once per run, and only when a file needs it
        if not probed:
            probed.append(auto_batch_size(enc, dev, len(scales) * views.n_views))
        return probed[0]

    # the next sample loads (counts, coordinates) in a thread while the current one is encoded
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stfeat-load") as pool:
        futures = {work[0]: pool.submit(_load_sample, refs[work[0]])}
        for j, i in enumerate(work):
            t0 = time.perf_counter()
            if j + 1 < len(work):
                futures[work[j + 1]] = pool.submit(_load_sample, refs[work[j + 1]])
            with C.cache_lock(finals[i]):
                plan = _plan(finals[i], ident, scales, dtype=dt, k=k_neighbors, um_per_px=um_per_px,
                             overwrite=overwrite, sample_id=refs[i].sample_id, mode=mode)  # again, under the lock: another rank may have finished it
                if plan.action == "skip":
                    report(SampleResult(refs[i].sample_id, finals[i], "skipped", plan.n_spots, 0,
                                        time.perf_counter() - t0, plan.scales, views.n_views))
                    futures.pop(i).cancel()
                    continue
                sample = futures.pop(i).result()
                status, n_comp = _extract_one(refs[i], sample, finals[i], plan, enc=enc, ident=ident, dtype=dt,
                                              k=k_neighbors, batch_size=batch_size, num_workers=workers,
                                              device=dev, um_override=um_per_px, progress=progress,
                                              callback=callback, auto_bs=auto_bs, mode=mode, tile_px=tile_px,
                                              views=views)
            report(SampleResult(sample.sample_id, finals[i], status, int(sample.n_spots), n_comp,
                                time.perf_counter() - t0, plan.scales, views.n_views))
    return finals


def extract(samples: Any, *, encoder: "str | Encoder", cache_dir: str | Path | None = None,
            scales_um: Sequence[float] = DEFAULT_SCALES_UM, image: str | Path | None = None, **kwargs: Any):
    """Extract (or reuse) the cached features of ``samples`` and return them as a FeatureSet.

    ``st.extract(st.read("runs/"), encoder="uni", scales_um=(112, 224, 448), cache_dir="cache")``. The keyword
    arguments are those of :func:`extract_caches`; finished cache files are reused, interrupted ones resumed.
    With a shard (or under torchrun) the FeatureSet holds this rank's samples. ``image`` is the H&E of the one
    sample ``samples`` names (``st.extract("s1.h5ad", image="s1_he.tif", encoder=...)``), as ``--image``.

    Returns
    -------
    stfeat.features.FeatureSet
        Features at ``scales_um``, spot coordinates, neighbours, counts and provenance of every sample.
    """
    from stfeat.features import FeatureSet
    from stfeat.io import as_samples

    root = Path(cache_dir if cache_dir is not None else os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))
    loaded = as_samples(samples, um_per_px=kwargs.get("um_per_px"), image=image)
    paths = extract_caches(loaded, encoder=encoder, cache_dir=root, scales_um=scales_um, **kwargs)
    from stfeat.views import VIEW_OPTIONS, extraction_identity

    _, _, ident = extraction_identity(encoder, weights=kwargs.get("weights"), pretrained=kwargs.get("pretrained", True),
                                      **{k: v for k, v in kwargs.items() if k in VIEW_OPTIONS})
    mine = {p.name for p in paths}
    kept = [s for s in loaded if C.cache_path(root, ident.tag, s.sample_id).name in mine]
    return FeatureSet.load(kept, encoder=ident.name, cache_dir=root, scales_um=sorted({float(s) for s in scales_um}))


__all__ = ["extract", "extract_caches", "extract_points", "iter_features", "encoder_identity", "SampleResult", "CropDataset",
           "auto_batch_size", "default_num_workers", "DEFAULT_SCALES_UM", "CPU_BATCH_SIZE"]
