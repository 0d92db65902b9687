"""Dense extraction: one encoder forward per tissue tile, a point's feature pooled from the token map.

Crop mode runs one forward per point and field of view. At bin or cell density (Visium HD 8 um
bins, Xenium cells) that is millions of forwards per slide, although neighbouring crops overlap
almost entirely. Dense mode reads, at each field of view ``s``, overlapping tiles at the crop's own
resolution (``s / input_px`` um per tile pixel, so a 224 px crop is a 224 px window of the tile) and
runs the encoder once per tile, keeping its patch-token map (ViT) or last feature map (CNN). A point's
feature is the mean of the map over the window of the crop centred on it (``input_px / stride`` cells
a side; a box filter, then bilinear interpolation at the point's sub-cell position), which is what
the crop's global average pool computes, but with real tissue instead of zero padding around the
window. A ViT pooled as ``cls+mean`` gets the tile's CLS token in front of the window mean.

Tiles step by ``tile_px - input_px`` tile pixels: consecutive tiles overlap by one window, so each
point is served by the tile whose inner region (the tile less half a window on every side) holds it,
and no window is cut by a tile edge. Only tiles that serve a point are computed; for grids,
:func:`tissue_points` lays the points over a tissue mask made from the thumbnail.

A point's tissue fraction (``/tissue/{scale}`` in the cache, as crop mode records it) comes from the same
tile pixels: the background mask of :func:`stfeat.views.background_mask` (near-white or near-black in every
channel; the white padding past the image edge is background) summed over the window by an integral image,
bilinear between whole-pixel windows (:func:`_window_tissue`), so it covers the crop's field of view.

``mode="auto"`` (:func:`resolve_mode`) picks dense when points are closer than
:data:`AUTO_DENSE_SPACING_UM` (bins, cells) and the encoder exposes a feature map, else crop.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from stfeat.encoders.base import Encoder

log = logging.getLogger(__name__)

MODES = ("crop", "dense", "auto")
AUTO_DENSE_SPACING_UM = 50.0  # spots: 100 um (Visium) / 200 um (ST) pitch; bins 2-16 um; cells ~10-20 um
TILE_WINDOWS = {"cnn": 6, "vit": 4}  # default tile side in windows (input_px) per kind of map


# ---------------------------------------------------------------- the encoder's map
@dataclass
class MapModel:
    """How to get a feature map from an encoder: ``kind`` "cnn" or "vit", the stride in input pixels,
    the token-prefix count and whether the spec's pooling puts a CLS token first."""

    kind: str
    stride: int
    prefix: int = 0
    with_cls: bool = False
    inner: Any = None


def map_model(enc: "Encoder") -> MapModel:
    """Inspect the encoder's module; InputError when it has no feature map to pool (e.g. ``classical``)."""
    m = enc.model
    pooling = str(enc.spec.pooling)
    vit = getattr(m, "model", m)  # TokenPool wraps the timm ViT as .model
    if hasattr(vit, "patch_embed") and hasattr(vit, "forward_features"):
        ps = vit.patch_embed.patch_size
        ps = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        mode = getattr(m, "mode", "cls" if getattr(vit, "global_pool", "token") == "token" else "mean")
        prefix = int(getattr(vit, "num_prefix_tokens", 1))
        width = int(getattr(vit, "embed_dim", enc.embed_dim))
        with_cls = mode == "cls+mean" or (pooling.startswith("cls+") and enc.embed_dim == 2 * width)
        return MapModel("vit", ps, prefix, with_cls, vit)
    if hasattr(m, "stem") and hasattr(m, "layers"):  # truncated ResNet (stfeat.encoders.baselines)
        return MapModel("cnn", _probe_stride(lambda x: m.layers(m.stem(x)), enc), inner=lambda x: m.layers(m.stem(x)))
    if hasattr(m, "forward_features") and not hasattr(m, "patch_embed"):
        return MapModel("cnn", _probe_stride(m.forward_features, enc), inner=m.forward_features)
    raise InputError(None, f"encoder {enc.spec.name!r} exposes no patch-token or feature map for dense extraction.",
                     "use mode='crop' (--mode crop) with this encoder, or a timm ViT/CNN encoder.")


def _probe_stride(fn, enc: "Encoder") -> int:
    import torch

    px = int(enc.spec.input_px)
    with torch.inference_mode():
        out = fn(torch.zeros(1, 3, px, px, device=enc.device))
    if out.ndim != 4:
        raise InputError(None, f"encoder {enc.spec.name!r}: forward_features returned {tuple(out.shape)}, not a "
                         "(B, C, h, w) map.", "use mode='crop' (--mode crop) with this encoder.")
    return int(round(px / out.shape[-1]))


def supports_dense(enc: "Encoder") -> bool:
    try:
        map_model(enc)
    except InputError:
        return False
    return True


def _forward_map(enc: "Encoder", mm: MapModel, tiles_uint8: "torch.Tensor"):
    """uint8 (B, T, T, 3) -> (map float32 (B, C, T/stride, T/stride), cls (B, C) or None)."""
    import torch

    dev = enc.device
    x = enc.preprocess(tiles_uint8.to(dev, non_blocking=True))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(enc.spec.precision)
    ctx = torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None and dev.type == "cuda" else _null()
    with torch.inference_mode(), ctx:
        if mm.kind == "cnn":
            return mm.inner(x).float(), None
        vit = mm.inner
        saved = (vit.dynamic_img_size, vit.patch_embed.strict_img_size, vit.patch_embed.flatten,
                 vit.patch_embed.output_fmt)
        from timm.layers import Format

        try:  # the same switches timm sets for dynamic_img_size=True, for any tile size
            vit.dynamic_img_size = True
            vit.patch_embed.strict_img_size, vit.patch_embed.flatten = False, False
            vit.patch_embed.output_fmt = Format.NHWC
            t = vit.forward_features(x).float()
        finally:
            (vit.dynamic_img_size, vit.patch_embed.strict_img_size, vit.patch_embed.flatten,
             vit.patch_embed.output_fmt) = saved
        g = x.shape[-1] // mm.stride
        patch = t[:, mm.prefix:].reshape(t.shape[0], g, g, t.shape[-1]).permute(0, 3, 1, 2)
        return patch, (t[:, 0] if mm.with_cls else None)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _window_means(fmap: "torch.Tensor", k: int, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Mean of the k x k cell window starting at fractional cell (fy, fx), bilinear between windows.

    ``fmap`` (C, H, W); returns (n, C) float32.
    """
    import torch
    import torch.nn.functional as F

    box = F.avg_pool2d(fmap[None], kernel_size=k, stride=1)[0]  # (C, H-k+1, W-k+1): box[:, i, j] = window at i, j
    H, W = box.shape[1:]
    fy = np.clip(fy, 0, H - 1)
    fx = np.clip(fx, 0, W - 1)
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy = torch.from_numpy((fy - y0).astype(np.float32)).to(box.device)
    wx = torch.from_numpy((fx - x0).astype(np.float32)).to(box.device)
    t = lambda a: torch.from_numpy(a).to(box.device)  # noqa: E731
    Y0, Y1, X0, X1 = t(y0), t(y1), t(x0), t(x1)
    v = (box[:, Y0, X0] * (1 - wy) * (1 - wx) + box[:, Y0, X1] * (1 - wy) * wx
         + box[:, Y1, X0] * wy * (1 - wx) + box[:, Y1, X1] * wy * wx)
    return v.T.contiguous().cpu().numpy()


def _background_sums(tile: np.ndarray) -> np.ndarray:
    """Integral image (T+1, T+1) int64 of the tile's background mask (:func:`stfeat.views.background_mask`)."""
    from stfeat.views import background_mask

    bg = background_mask(tile).astype(np.int64)
    ii = np.zeros((bg.shape[0] + 1, bg.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(bg, 0), 1, out=ii[1:, 1:])
    return ii


def _window_tissue(ii: np.ndarray, p: int, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Tissue fraction of the p x p pixel window with fractional top-left (fy, fx), from the integral image
    ``ii`` of the background mask: the whole-pixel windows' background counts, bilinear (the exact area-weighted
    count of the fractional window). Returns (n,) float32 in [0, 1]."""
    box = ii[p:, p:] - ii[:-p, p:] - ii[p:, :-p] + ii[:-p, :-p]  # box[i, j]: window with top-left (i, j)
    H, W = box.shape
    fy = np.clip(np.asarray(fy, np.float64), 0, H - 1)
    fx = np.clip(np.asarray(fx, np.float64), 0, W - 1)
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy, wx = fy - y0, fx - x0
    bg = (box[y0, x0] * (1 - wy) * (1 - wx) + box[y0, x1] * (1 - wy) * wx
          + box[y1, x0] * wy * (1 - wx) + box[y1, x1] * wy * wx)
    return np.clip(1.0 - bg / float(p * p), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- tiles
@dataclass
class TilePlan:
    """Tiles of one field of view: level-0 centres of the tiles that serve a point, and who they serve."""

    scale_um: float
    tile_px: int
    q: float  # level-0 px per tile px
    centres: np.ndarray  # (t, 2) level-0 px
    members: list[np.ndarray] = field(default_factory=list)  # point indices per tile

    @property
    def n_tiles(self) -> int:
        return len(self.centres)


def plan_tiles(centres_px: np.ndarray, *, scale_um: float, input_px: int, um_per_px: float,
               tile_px: int) -> TilePlan:
    """Assign every point to the one tile whose inner region holds it (tiles overlap by one window)."""
    if tile_px <= input_px:
        raise ValueError(f"tile_px ({tile_px}) must exceed the encoder input ({input_px} px)")
    q = (scale_um / input_px) / um_per_px
    step = (tile_px - input_px) * q  # level-0 px between tile origins
    half = input_px / 2 * q
    origin = centres_px.min(axis=0) - half  # tile (0, 0) starts half a window before the first point
    ij = np.floor((centres_px - origin - half) / step).astype(np.int64)
    ij = np.clip(ij, 0, None)
    key = ij[:, 1] * (int(ij[:, 0].max()) + 1) + ij[:, 0]
    order = np.argsort(key, kind="stable")
    uniq, start = np.unique(key[order], return_index=True)
    groups = np.split(order, start[1:])
    tiles_ij = ij[order[start]]
    tile_centres = origin + tiles_ij * step + tile_px * q / 2
    return TilePlan(float(scale_um), int(tile_px), float(q), tile_centres.astype(np.float64), groups)


def default_tile_px(enc: "Encoder", mm: MapModel | None = None) -> int:
    mm = mm or map_model(enc)
    return TILE_WINDOWS[mm.kind] * int(enc.spec.input_px)


@dataclass
class DenseStats:
    """What dense extraction did: tiles (= encoder forwards) per scale and the time taken."""

    forwards: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tile_px: int = 0

    def to_attrs(self) -> dict[str, Any]:
        return {"dense_tile_px": self.tile_px, "dense_forwards": sum(self.forwards.values()),
                "dense_forwards_per_scale": json.dumps(self.forwards, sort_keys=True), "dense_seconds": round(self.seconds, 3)}


def iter_dense(slide: Any, centres_px: np.ndarray, *, encoder: "Encoder", scale_um: float, um_per_px: float,
               tile_px: int | None = None, tiles_per_batch: int = 1, prefetch: int = 2, stats: DenseStats | None = None,
               tissue: bool = False):
    """Yield ``(point indices, features float32 (m, d), padded bool (m,))`` tile by tile for one scale, with
    ``tissue=True`` also each point's tissue fraction float32 (m,) over its window (the crop's field of view).

    Tiles are read (and their background masks summed) in a background thread (``prefetch`` ahead) while the
    encoder runs.
    """
    import torch

    from stfeat.cache import scale_name

    mm = map_model(encoder)
    P = int(encoder.spec.input_px)
    T = int(tile_px or default_tile_px(encoder, mm))
    T -= T % mm.stride
    k = P // mm.stride
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    plan = plan_tiles(centres, scale_um=scale_um, input_px=P, um_per_px=um_per_px, tile_px=T)
    w, h = slide.dimensions
    half = scale_um / 2 / um_per_px
    pad_all = ((centres[:, 0] - half < 0) | (centres[:, 1] - half < 0)
               | (centres[:, 0] + half > w) | (centres[:, 1] + half > h))
    if stats is not None:
        stats.tile_px = T
        stats.forwards[scale_name(scale_um)] = stats.forwards.get(scale_name(scale_um), 0) + plan.n_tiles

    def read(i: int) -> np.ndarray:
        return slide.read_region(plan.centres[i], T * plan.q * um_per_px, T, um_per_px=um_per_px)[0]

    def read_batch(b: list[int]) -> tuple[np.ndarray, list[np.ndarray] | None]:
        tiles = np.stack([read(i) for i in b])
        return tiles, ([_background_sums(t) for t in tiles] if tissue else None)

    batches = [list(range(a, min(plan.n_tiles, a + tiles_per_batch))) for a in range(0, plan.n_tiles, tiles_per_batch)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stfeat-tiles") as pool:
        futs = [pool.submit(read_batch, b) for b in batches[:prefetch]]
        for bi, b in enumerate(batches):
            tiles, sums = futs[bi].result()
            if bi + prefetch < len(batches):
                futs.append(pool.submit(read_batch, batches[bi + prefetch]))
            futs[bi] = None  # type: ignore[call-overload]
            fmap, cls = _forward_map(encoder, mm, torch.from_numpy(tiles))
            for j, ti in enumerate(b):
                idx = plan.members[ti]
                origin = plan.centres[ti] - T * plan.q / 2
                u = (centres[idx] - origin) / plan.q  # tile px (x, y)
                fx, fy = (u[:, 0] - P / 2) / mm.stride, (u[:, 1] - P / 2) / mm.stride
                feats = _window_means(fmap[j], k, fy, fx)
                if cls is not None:
                    feats = np.concatenate([np.repeat(cls[j][None].cpu().numpy(), len(idx), 0), feats], axis=1)
                if sums is None:
                    yield idx, feats, pad_all[idx]
                else:  # the window's pixels: top-left at u - P/2, as the features' cells
                    yield idx, feats, pad_all[idx], _window_tissue(sums[j], P, u[:, 1] - P / 2, u[:, 0] - P / 2)


def dense_features(slide: Any, centres_px: np.ndarray, *, encoder: "Encoder", scales_um: Sequence[float],
                   um_per_px: float, tile_px: int | None = None, tiles_per_batch: int = 1,
                   stats: DenseStats | None = None, dtype: Any = np.float32, tissue: dict | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Dense features at arbitrary points: scale name -> (n, d) features and (n,) padded flags.

    ``tissue``: a dict to fill with scale name -> (n,) float32 tissue fraction of each point's window (the
    crop's field of view; what crop mode stores in ``/tissue/{scale}``); None = not computed."""
    from stfeat.cache import scale_name

    t0 = time.perf_counter()
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    feats: dict[str, np.ndarray] = {}
    pads: dict[str, np.ndarray] = {}
    for s in scales_um:
        name = scale_name(s)
        F = np.zeros((n, encoder.embed_dim), dtype=dtype)
        Pd = np.zeros(n, bool)
        Tf = np.full(n, np.nan, np.float32)
        for idx, f, p, *t in iter_dense(slide, centres, encoder=encoder, scale_um=float(s), um_per_px=um_per_px,
                                        tile_px=tile_px, tiles_per_batch=tiles_per_batch, stats=stats,
                                        tissue=tissue is not None):
            if f.shape[1] != encoder.embed_dim:
                raise RuntimeError(f"dense features of {encoder.spec.name!r} have {f.shape[1]} dims, the encoder "
                                   f"{encoder.embed_dim}")
            F[idx], Pd[idx] = f, p
            if t:
                Tf[idx] = t[0]
        feats[name], pads[name] = F, Pd
        if tissue is not None:
            tissue[name] = Tf
    if stats is not None:
        stats.seconds += time.perf_counter() - t0
    return feats, pads


# ---------------------------------------------------------------- choosing the mode
def median_spacing_um(coords_um: np.ndarray, max_points: int = 20000) -> float:
    """Median nearest-neighbour distance (um) of the points (a seeded sample of them when many)."""
    from scipy.spatial import cKDTree

    c = np.asarray(coords_um, dtype=np.float64)
    if len(c) < 2:
        return float("inf")
    tree = cKDTree(c)
    q = c if len(c) <= max_points else c[np.random.default_rng(0).choice(len(c), max_points, replace=False)]
    d, _ = tree.query(q, k=2)
    return float(np.median(d[:, 1]))


def resolve_mode(mode: str, coords_um: np.ndarray, encoder: "Encoder | None" = None) -> tuple[str, str]:
    """``(crop|dense, reason)`` for a requested mode; "auto" decides from the point spacing."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode, "requested"
    sp = median_spacing_um(coords_um)
    if sp > AUTO_DENSE_SPACING_UM:
        return "crop", f"auto: median point spacing {sp:.1f} um > {AUTO_DENSE_SPACING_UM:g} um (spots)"
    if encoder is not None and not supports_dense(encoder):
        return "crop", f"auto: spacing {sp:.1f} um, but encoder {encoder.spec.name} has no feature map"
    return "dense", f"auto: median point spacing {sp:.1f} um <= {AUTO_DENSE_SPACING_UM:g} um (bins/cells)"


def cache_mode(f: Any, path: Any, mode: str, coords_um: np.ndarray, encoder: "Encoder", masks: dict) -> str:
    """Resolve the mode of one cache file, refuse to mix modes in it, and record it in its attrs."""
    from stfeat import cache as C

    m, why = resolve_mode(mode, coords_um, encoder)
    prev = f.attrs.get("extraction_mode")
    if prev is not None and str(prev) != m and any(v.any() for v in masks.values()):
        raise InputError(path, f"holds {prev}-mode features, not {m}-mode ones ({why}).",
                         "pass --overwrite to recompute it, or use another --cache-dir.")
    C.set_attrs(f, {"extraction_mode": m, "extraction_mode_reason": why})
    return m


# ---------------------------------------------------------------- tissue
def tissue_mask(slide: Any, *, max_px: int = 1024) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of the thumbnail and its scale (thumbnail px per level-0 px).

    Otsu threshold on the HSV saturation (tissue is stained, glass and black borders are not),
    then a closing (scikit-image disk), hole filling and small-object removal (scipy.ndimage).
    """
    from scipy import ndimage as ndi
    from skimage import color, filters, morphology

    rgb, scale = slide.thumbnail(max_px)
    sat = color.rgb2hsv(rgb[..., :3])[..., 1]
    val = rgb[..., :3].max(axis=2)
    thr = filters.threshold_otsu(sat) if np.ptp(sat) > 1e-6 else 1.0
    mask = (sat > thr) & (val > 30)
    r = max(1, int(round(min(mask.shape) / 200)))
    mask = ndi.binary_closing(np.pad(mask, r), structure=morphology.disk(r))[r:-r, r:-r]
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        small = sizes < max(16, int(mask.size * 1e-4))
        small[0] = True
        mask = ~small[lab]
    return mask, float(scale)


def tissue_points(slide: Any, *, step_um: float, um_per_px: float, max_px: int = 1024) -> np.ndarray:
    """Centres (level-0 px, (x, y)) of a ``step_um`` square grid over the tissue mask."""
    mask, scale = tissue_mask(slide, max_px=max_px)
    w, h = slide.dimensions
    step = step_um / um_per_px
    xs = np.arange(step / 2, w, step)
    ys = np.arange(step / 2, h, step)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    mi = np.clip((pts[:, 1] * scale).astype(int), 0, mask.shape[0] - 1)
    mj = np.clip((pts[:, 0] * scale).astype(int), 0, mask.shape[1] - 1)
    return pts[mask[mi, mj]]


__all__ = ["MODES", "AUTO_DENSE_SPACING_UM", "DenseStats", "TilePlan", "dense_features", "iter_dense",
           "map_model", "median_spacing_um", "plan_tiles", "resolve_mode", "supports_dense", "tissue_mask",
           "tissue_points"]


# ---------------------------------------------------------------- into an open cache file
def write_dense(f: Any, slide: Any, coords: np.ndarray, scales_um: Sequence[float], *, encoder: "Encoder",
                um_per_px: float, dtype: Any, tile_px: int | None = None, callback: Any = None, sample_id: str = "", block_rows: int = 8192) -> tuple[int, DenseStats]:
    """Compute the missing rows of ``scales_um`` densely and write them into an open cache file.

    A scale is written in row blocks (features, padded flags and tissue fractions), each flagged done after
    them, like crop mode; an interrupted scale is recomputed from its tiles (a tile serves many rows, so
    resuming row by row would not save forwards).
    """
    from stfeat import cache as C

    stats = DenseStats()
    masks = C.done_masks(f)
    n_computed = 0
    for s in scales_um:
        name = C.scale_name(s)
        todo = np.flatnonzero(~masks[name])
        if todo.size == 0:
            continue
        t0 = time.perf_counter()
        tissue: dict[str, np.ndarray] = {}  # features in the stored dtype: half the memory
        feats, pads = dense_features(slide, coords[todo], encoder=encoder, scales_um=[s], um_per_px=um_per_px,
                                     tile_px=tile_px, stats=stats, dtype=dtype, tissue=tissue)
        F, Pd, Tf = feats[name], pads[name], tissue[name].astype(np.float16)
        tset = C.require_tissue(f, name, len(coords))
        for a in range(0, todo.size, block_rows):
            rows = todo[a:a + block_rows]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo == rows.size:  # contiguous rows: one slice write
                f["features"][name][lo:hi] = F[a:a + rows.size]
                f["padded"][name][lo:hi] = Pd[a:a + rows.size]
                tset[lo:hi] = Tf[a:a + rows.size]
                f["done"][name][lo:hi] = True
            else:
                f["features"][name][rows] = F[a:a + rows.size]
                f["padded"][name][rows] = Pd[a:a + rows.size]
                tset[rows] = Tf[a:a + rows.size]
                f["done"][name][rows] = True
            f.flush()
        n_computed = max(n_computed, int(todo.size))
        log.info("%s: %s um dense, %d points from %d tiles in %.1f s", sample_id, name, todo.size,
                 stats.forwards.get(name, 0), time.perf_counter() - t0)
        if callback is not None:
            callback(sample_id, int(todo.size), int(todo.size))
    return n_computed, stats
