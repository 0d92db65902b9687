"""Patch tokens in the feature cache (M2OST's input): the encoder's token grid of each crop, pooled to G x G.

``stfeat extract --tokens G`` (``ViewSpec.tokens``, :mod:`stfeat.views`) stores, next to each crop's pooled
vector, the map the encoder computed before pooling it: a ViT's patch tokens (prefix tokens dropped) or a
CNN's last feature map (``forward_features``), average-pooled to G x G cells (``adaptive_avg_pool2d``), as
``/tokens/{scale}`` of shape (n, G*G, C) in float16. Cell ``i * G + j`` is row ``i`` (top to bottom) and
column ``j`` (left to right) of the crop; its centre lies ``((j + 0.5) / G - 0.5, (i + 0.5) / G - 0.5)``
fields of view from the spot centre (:func:`cell_offsets_um`). The cache attrs say ``tokens_grid`` (G),
``tokens_dim`` (C) and ``tokens_source``. The tokens come from the same forward pass as the pooled vector
(the map is captured on its way to the encoder's pooling), so they cost storage, not encoder time.

Stage two reads them with :meth:`stfeat.features.SampleFeatures.patch_tokens`; ``AttentionHead(patch_tokens=
True)`` attends to them beside the pooled vectors and the neighbours (:func:`stfeat.head_inputs.token_features`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from stfeat.encoders.base import Encoder

GROUP = "tokens"


@contextlib.contextmanager
def capture(enc: "Encoder", grid: int) -> Iterator[Callable[[], "torch.Tensor"]]:
    """While open, every ``enc(x)`` also keeps the map it pooled; the yielded ``take()`` returns the last
    forward's map pooled to ``grid`` x ``grid``: float32 (B, grid * grid, C) on the encoder's device.

    InputError for an encoder without a token or feature map (e.g. ``classical``).
    """
    import torch

    from stfeat.dense import map_model

    try:
        mm = map_model(enc)
    except InputError:
        raise InputError(None, f"encoder {enc.spec.name!r} has no patch-token or feature map to store as tokens.",
                         "extract without --tokens, or use a timm ViT/CNN encoder.") from None
    box: dict[str, Any] = {}
    m = enc.model
    if mm.kind == "vit":
        target, hook = mm.inner, None
    elif hasattr(m, "stem") and hasattr(m, "layers"):  # truncated ResNet: the output of its last stage
        target, hook = None, m.layers.register_forward_hook(lambda _m, _i, out: box.__setitem__("map", out))
    else:
        target, hook = m, None
    if target is not None:
        orig = target.forward_features

        def keep(*a: Any, **k: Any) -> Any:
            out = orig(*a, **k)
            box["map"] = out
            return out
        target.forward_features = keep  # an instance attribute: forward() calls it instead of the method

    def take() -> "torch.Tensor":
        t = box.pop("map", None)
        if t is None:
            raise RuntimeError(f"encoder {enc.spec.name!r}: no token map was captured in the last forward")
        t = t.float()
        if mm.kind == "vit":
            p = t[:, mm.prefix:]
            g = int(round(np.sqrt(p.shape[1])))
            if g * g != p.shape[1]:
                raise RuntimeError(f"encoder {enc.spec.name!r}: {p.shape[1]} patch tokens are not a square grid")
            t = p.reshape(p.shape[0], g, g, p.shape[2]).permute(0, 3, 1, 2)
        if t.ndim != 4:
            raise RuntimeError(f"encoder {enc.spec.name!r}: the captured map has shape {tuple(t.shape)}, not (B, C, h, w)")
        pooled = torch.nn.functional.adaptive_avg_pool2d(t, int(grid))  # (B, C, G, G)
        return pooled.permute(0, 2, 3, 1).reshape(t.shape[0], int(grid) ** 2, t.shape[1])

    try:
        yield take
    finally:
        if hook is not None:
            hook.remove()
        if target is not None:
            del target.forward_features


def source_of(enc: "Encoder") -> str:
    """``"vit patch tokens"`` or ``"cnn feature map"``: what :func:`capture` pools."""
    from stfeat.dense import map_model

    return "vit patch tokens" if map_model(enc).kind == "vit" else "cnn feature map"


def token_dim(enc: "Encoder", grid: int) -> int:
    """C of the encoder's pooled token map (one forward of a blank crop)."""
    import torch

    px = int(enc.spec.input_px)
    with capture(enc, grid) as take:
        enc(torch.full((1, px, px, 3), 255, dtype=torch.uint8))
        return int(take().shape[-1])


def add_tokens(f: Any, name: str, *, n: int, grid: int, dim: int, chunk_rows: int = 64) -> None:
    """Create ``/tokens/{name}`` (n, grid * grid, dim) float16 in an open cache file, if absent."""
    g = f.require_group(GROUP)
    if name in g:
        ds = g[name]
        if ds.shape != (n, grid * grid, dim):
            raise InputError(Path(f.filename), f"its tokens/{name} are {ds.shape}, not ({n}, {grid * grid}, {dim}).",
                             "pass --overwrite to recompute the cache.")
        return
    g.create_dataset(name, shape=(n, grid * grid, dim), dtype=np.float16,
                     chunks=(max(1, min(n, chunk_rows)), grid * grid, dim) if n else None)


def read_tokens(path: str | Path, name: str, order: np.ndarray | None = None) -> np.ndarray:
    """``/tokens/{name}`` of a cache file as float32 (n, G*G, C), rows in ``order`` (file rows) if given."""
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if GROUP not in f or name not in f[GROUP]:
            raise InputError(path, f"holds no patch tokens at scale {name} um.",
                             "re-extract with `stfeat extract ... --tokens G` (a +tok{G} cache folder).")
        t = f[GROUP][name][...].astype(np.float32)
    if not np.isfinite(t).all():
        raise InputError(path, f"tokens/{name} holds NaN or infinite values.",
                         "re-extract with --dtype float32 if the encoder overflows float16, or --overwrite.")
    return t if order is None else t[np.asarray(order, np.int64)]


def sample_tokens(sf: Any, scale: str, standardize: str = "none") -> np.ndarray:
    """(n, G*G, C) float32 patch tokens of one scale of a :class:`stfeat.features.SampleFeatures`, read from its
    cache in its row order; under ``standardize="slide"`` centred and scaled per channel with the tokens' own
    statistics over the sample's spots and cells (:mod:`stfeat.standardize`)."""
    from stfeat.features import scale_name
    from stfeat.standardize import apply_inplace, check_standardize

    if not sf.token_grid:
        raise InputError(sf.source, f"the feature cache of {sf.sample_id} holds no patch tokens.",
                         "re-extract with `stfeat extract ... --tokens G` and use that ENCODER+tokG encoder name.")
    name = scale_name(scale)
    t = read_tokens(sf.source, name, sf.token_rows)
    if len(t) != sf.n_spots:
        raise InputError(sf.source, f"tokens/{name} has {len(t)} rows for {sf.n_spots} spots: the file is damaged.",
                         "re-extract the sample with --overwrite.")
    if check_standardize(standardize) == "slide":  # the tokens' own statistics over the slide's spots and cells
        from stfeat.heads._base import standardize_fit

        apply_inplace(t, standardize_fit(t.reshape(-1, t.shape[-1])))
    return t


def cell_offsets_um(grid: int, fov_um: float) -> np.ndarray:
    """(G*G, 2) offsets (x, y) in micrometres of the G x G cell centres from the crop centre."""
    c = ((np.arange(grid) + 0.5) / grid - 0.5) * float(fov_um)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def cache_bytes_per_spot(path: str | Path) -> dict[str, float]:
    """Bytes per spot of a cache's pooled features and of its tokens (dataset storage, all scales)."""
    import h5py

    with h5py.File(Path(path), "r") as f:
        n = max(1, int(f["barcodes"].shape[0]))
        feats = sum(f["features"][s].id.get_storage_size() for s in f["features"])
        toks = sum(f[GROUP][s].id.get_storage_size() for s in f[GROUP]) if GROUP in f else 0
    return {"features": feats / n, "tokens": toks / n}


__all__ = ["capture", "token_dim", "add_tokens", "read_tokens", "sample_tokens", "cell_offsets_um", "source_of",
           "cache_bytes_per_spot"]
