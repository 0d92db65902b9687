"""Crops -> encoder -> features: crop decoding in DataLoader workers, batching, the device loop.

The inference machinery under :func:`stfeat.extraction.extract` (which adds the cache planning, the
writer thread and the encoder identity) and :func:`extract_points` (features at arbitrary points,
e.g. the dense grids of ``predict --grid``)::

    DataLoader workers: Slide.read_regions for every scale of a chunk of spots -> uint8 (b, S, px, px, 3)
    main thread:        chunks reassembled into fixed blocks -> pinned uint8 -> device (non-blocking)
                        -> Encoder (normalise on device, autocast) -> float32 (b, S, d)

Its public names are re-exported by :mod:`stfeat.extraction`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from stfeat import cache as C
from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from stfeat.encoders.base import Encoder

DEFAULT_SCALES_UM: tuple[float, ...] = (112.0, 224.0, 448.0)
CPU_BATCH_SIZE = 32
#: most crops per CPU forward (32 spots x 3 scales fit; d8's 8 views are sliced: d8 peaked at 8.7 GB RSS unsliced)
CPU_MAX_CROPS = 128


# ---------------------------------------------------------------- the model
def _build_encoder(encoder: "str | Encoder", *, weights, pretrained: bool, device: str) -> "Encoder":
    import torch

    from stfeat.encoders.base import Encoder

    if isinstance(encoder, Encoder):
        enc = encoder
    else:
        from stfeat.encoders import create_encoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-weight runs are reproducible (and resumable)
            enc = create_encoder(str(encoder), weights=weights, device=device, pretrained=pretrained)
    enc.to(device)
    enc.model.eval()
    if torch.device(device).type == "cuda" and getattr(enc.spec, "channels_last", False):
        enc.model.to(memory_format=torch.channels_last)
    return enc


# ---------------------------------------------------------------- crops
class CropDataset:
    """A torch-style dataset whose item ``i`` is block ``i`` of spots, all scales decoded together.

    Items are ``(start, crops uint8 (b, S*V, px, px, 3), padded bool (b, S), tissue float32 (b, S))``: one
    item per batch keeps worker-to-main IPC to one shared-memory tensor per batch. ``views``
    (:class:`stfeat.views.ViewSpec`, default plain: V = 1) turns each crop into its V views in the worker;
    ``tissue`` is each crop's tissue fraction (:func:`stfeat.views.background_mask`).
    """

    def __init__(self, slide: Any, centres_px: np.ndarray, blocks: Sequence[tuple[int, int]],
                 scales_um: Sequence[float], out_px: int, um_per_px: float, views: Any = None) -> None:
        from stfeat.views import ViewSpec

        self.views = views if views is not None else ViewSpec()
        self.slide = slide
        self.centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        self.blocks = list(blocks)
        self.scales_um = [float(s) for s in scales_um]
        self.out_px = int(out_px)
        self.um_per_px = float(um_per_px)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int):
        import torch

        from stfeat._faults import WorkerFailure
        from stfeat.errors import StfeatError

        a, b = self.blocks[i]
        crops = np.empty((b - a, len(self.scales_um), self.out_px, self.out_px, 3), dtype=np.uint8)
        padded = np.zeros((b - a, len(self.scales_um)), dtype=bool)
        try:
            for j, s in enumerate(self.scales_um):
                crops[:, j], padded[:, j] = self.slide.read_regions(self.centres[a:b], s, self.out_px,
                                                                    um_per_px=self.um_per_px)
            crops, tissue = self.views.apply(crops, a)
        except StfeatError as exc:  # handed to the main process as it is (see stfeat._faults)
            return WorkerFailure(exc)
        return a, torch.from_numpy(crops), torch.from_numpy(padded), torch.from_numpy(tissue)


def _blocks(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]


def _resolve_device(device: str | None) -> str:
    import torch

    local = os.environ.get("LOCAL_RANK")  # torchrun: one GPU per local rank
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return f"cuda:{local}" if local is not None else "cuda"
        return "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} was requested but torch sees no CUDA GPU.",
                         "use --device cpu, or install a CUDA build of torch on a GPU machine.")
    if device == "cuda" and local is not None:
        return f"cuda:{local}"
    return str(device)


def default_num_workers(device: str) -> int:
    """DataLoader workers: on CPU one decoder process next to the compute threads (measured on 2
    cores: see benchmarks/bench_extract.py); on GPU most cores, leaving one for the main thread."""
    n = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(16, n - 1))
    return 1 if n >= 2 else 0


def auto_batch_size(encoder: "Encoder", device: str, n_scales: int, *, start_crops: int = 1024) -> int:
    """Spots per batch: 32 on CPU; on CUDA the largest power-of-two crop batch (from ``start_crops``)
    whose forward pass fits, halved on out-of-memory, divided by the number of scales."""
    import torch

    if not device.startswith("cuda"):
        return CPU_BATCH_SIZE
    px = int(encoder.spec.input_px)
    crops = start_crops
    while crops >= n_scales:
        try:
            x = torch.randint(0, 256, (crops, px, px, 3), dtype=torch.uint8, device=device)
            encoder(x)
            torch.cuda.synchronize(device)
            del x
            return max(1, crops // n_scales)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            crops //= 2
    return 1


def iter_features(slide: Any, centres_px: np.ndarray, *, encoder: "Encoder", scales_um: Sequence[float],
                  um_per_px: float, batch_size: int, blocks: Sequence[tuple[int, int]] | None = None,
                  num_workers: int = 0, device: str | None = None, prefetch_factor: int = 4, views: Any = None,
                  ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(start, stop, features float32 (b, S, d), padded bool (b, S), tissue float32 (b, S), tokens)`` per
    block; ``tokens`` is None, or with ``views.tokens`` = G the pooled patch tokens float32 (b, S, G*G, C) of the
    same forward (:mod:`stfeat.patch_tokens`).

    With ``views`` (:class:`stfeat.views.ViewSpec`) each crop becomes V views, all ``b x S x V`` crops of a
    block go through one forward pass and a spot's feature is the mean over its views.

    The encoder must already be on ``device``. Decoding runs in ``num_workers`` DataLoader
    processes, each decoding chunks of about ``batch_size / num_workers`` spots (so the first batch
    of a sample is ready after one chunk's decode time, not one batch's); chunks are reassembled into
    the fixed blocks here. On CUDA, chunks are copied from pinned memory into the device batch as
    they arrive (non-blocking) and the device-to-host copy of one batch overlaps the next forward.
    """
    import torch
    from torch.utils.data import DataLoader

    device = _resolve_device(device)
    n = len(centres_px)
    blocks = _blocks(n, batch_size) if blocks is None else list(blocks)
    if not blocks:
        return
    if hasattr(slide, "load"):
        slide.load()  # decode a JPEG once, before forking, so workers share its memory map
    workers = max(0, min(int(num_workers), sum(b - a for a, b in blocks)))
    chunk = max(1, -(-max(b - a for a, b in blocks) // max(1, workers)))
    chunks = [(c, min(b, c + chunk)) for a, b in blocks for c in range(a, b, chunk)]
    px = int(encoder.spec.input_px)
    ds = CropDataset(slide, centres_px, chunks, scales_um, px, um_per_px, views)
    cuda = device.startswith("cuda")
    from stfeat._faults import guarded, worker_timeout

    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=cuda,
                        prefetch_factor=prefetch_factor if workers else None, persistent_workers=False,
                        timeout=worker_timeout() if workers else 0)
    S = len(scales_um)
    V = int(ds.views.n_views)
    G = int(getattr(ds.views, "tokens", 0) or 0)
    stack = contextlib.ExitStack()
    take = None
    if G:
        from stfeat.patch_tokens import capture

        take = stack.enter_context(capture(encoder, G))

    def forward(crops):  # (pooled (m, d), tokens (m, G*G, C) or None) of one forward
        out = encoder(crops)
        return out, (take() if take is not None else None)

    def finish(p):  # wait for a batch's device-to-host copy and hand it out
        p_start, p_host, p_ev, p_pad, p_tis, p_tok = p
        p_ev.synchronize()
        return (p_start, p_start + p_pad.shape[0], p_host.view(p_pad.shape[0], S, -1).numpy(), p_pad.numpy(), p_tis,
                None if p_tok is None else p_tok.view(p_pad.shape[0], S, G * G, -1).numpy())

    try:
        todo = iter(blocks)
        a, b = next(todo)
        parts: list = []
        pads: list = []
        tiss: list = []
        buf = None
        pending = None
        for start, crops, padded, tissue in guarded(loader, workers):
            start = int(start)
            if cuda:
                if buf is None:
                    buf = torch.empty((b - a, S * V, px, px, 3), dtype=torch.uint8, device=device)
                buf[start - a:start - a + crops.shape[0]].copy_(crops, non_blocking=True)
            parts.append(crops)
            pads.append(padded)
            tiss.append(tissue)
            if start + crops.shape[0] < b:
                continue
            x = buf if cuda else (parts[0] if len(parts) == 1 else torch.cat(parts))
            padded_b = pads[0] if len(pads) == 1 else torch.cat(pads)
            tissue_b = torch.cat(tiss).numpy()
            flat = x.view((b - a) * S * V, px, px, 3)
            if cuda or flat.shape[0] <= CPU_MAX_CROPS:
                out, tok = forward(flat)
            else:  # on CPU, views multiply the crops of a block: forward them in slices to bound the activations
                pieces = [forward(flat[i:i + CPU_MAX_CROPS]) for i in range(0, flat.shape[0], CPU_MAX_CROPS)]
                out = torch.cat([p[0] for p in pieces])
                tok = None if take is None else torch.cat([p[1] for p in pieces])
            if V > 1:  # a spot's embedding: the mean over its views (tokens are refused with TTA views)
                out = out.view(b - a, S, V, -1).float().mean(2)
            if cuda:
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)
                host_tok = None
                if tok is not None:
                    host_tok = torch.empty(tok.shape, dtype=torch.float16, pin_memory=True)
                    host_tok.copy_(tok, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                if pending is not None:
                    yield finish(pending)
                pending = (a, host, ev, padded_b, tissue_b, host_tok)
            else:
                yield (a, b, out.reshape(b - a, S, -1).numpy(), padded_b.numpy(), tissue_b,
                       None if tok is None else tok.reshape(b - a, S, G * G, -1).numpy())
            parts, pads, tiss, buf = [], [], [], None
            a, b = next(todo, (b, b))
        if pending is not None:
            yield finish(pending)
    finally:
        stack.close()  # the encoder's forward_features is restored also when the consumer stops early


def extract_points(slide: Any, centres_px: np.ndarray, *, encoder: "str | Encoder", scales_um: Sequence[float]
                   = DEFAULT_SCALES_UM, um_per_px: float | None = None, batch_size: int | None = None,
                   num_workers: int = 0, device: str | None = None, weights: str | Path | None = None,
                   return_padded: bool = False, progress: bool = False, mode: str = "crop",
                   tile_px: int | None = None, views: Any = None,
                   ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features at arbitrary points (e.g. a dense grid), same crops and encoder path as :func:`extract`.

    Parameters
    ----------
    slide
        A :class:`stfeat.slide.Slide` (or anything with the same ``read_regions``).
    centres_px
        (n, 2) centres in level-0 px, (x, y).
    encoder
        A built :class:`~stfeat.encoders.base.Encoder` or a name for ``create_encoder``.
    um_per_px
        Micrometres per level-0 px; default the slide's own.
    return_padded
        Also return scale name -> (n,) bool "crop ran past the image edge".
    mode
        "crop", "dense" (one forward per tile, see :mod:`stfeat.dense`) or "auto" (by point density).
    views
        A :class:`stfeat.views.ViewSpec` (stain normalisation, TTA, background); a variant encoder name
        (``"densenet121+macenko+d8"``) sets it too. Dense mode takes plain views only.

    Returns
    -------
    dict
        Scale name (``"112"``) -> (n, d) float32 features.
    """
    from stfeat.encoders.base import Encoder
    from stfeat.views import ViewSpec

    if isinstance(encoder, str) and views is None:
        encoder, views = ViewSpec.from_variant(encoder)
    views = views if views is not None else ViewSpec()
    dev = _resolve_device(device)
    enc = encoder if isinstance(encoder, Encoder) else _build_encoder(encoder, weights=weights, pretrained=True,
                                                                       device=dev)
    enc.to(dev)
    enc.model.eval()
    um = um_per_px if um_per_px is not None else getattr(slide, "um_per_px", None)
    if um is None:
        raise InputError(getattr(slide, "path", None), "the micrometres per pixel of the image is unknown.",
                         "pass um_per_px=... (CLI: --um-per-px).")
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    n, S = len(centres), len(scales_um)
    if mode == "dense" and not views.plain:
        raise InputError(None, f"dense extraction takes plain views, not {views.suffix!r}.", "use mode='crop'.")
    if mode != "crop" and views.plain:
        from stfeat.dense import dense_features, resolve_mode

        if resolve_mode(mode, centres * float(um), enc)[0] == "dense":
            feats_d, pads_d = dense_features(slide, centres, encoder=enc, scales_um=scales_um, um_per_px=float(um),
                                             tile_px=tile_px)
            return (feats_d, pads_d) if return_padded else feats_d
    bs = batch_size or auto_batch_size(enc, dev, S * views.n_views)
    names = [C.scale_name(s) for s in scales_um]
    feats = {s: np.zeros((n, enc.embed_dim), np.float32) for s in names}
    pads = {s: np.zeros(n, bool) for s in names}
    bar = _bar(n, "points", progress)
    for a, b, f, p, _, _ in iter_features(slide, centres, encoder=enc, scales_um=scales_um, um_per_px=float(um),
                                       batch_size=bs, num_workers=num_workers, device=dev, views=views):
        for j, s in enumerate(names):
            feats[s][a:b] = f[:, j]
            pads[s][a:b] = p[:, j]
        bar.update(b - a)
    bar.close()
    return (feats, pads) if return_padded else feats


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="spot", disable=not enabled, leave=False, dynamic_ncols=True)


__all__ = ["CropDataset", "iter_features", "extract_points", "auto_batch_size", "default_num_workers",
           "DEFAULT_SCALES_UM", "CPU_BATCH_SIZE"]
