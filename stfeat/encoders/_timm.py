"""Build timm architectures locally, pool their tokens, and fill them with weights.

Every timm-based registry entry goes through :func:`timm_factory`: the architecture is built from
``spec.arch`` and ``spec.model_kwargs`` (the authors' constructor kwargs) with ``pretrained=False``;
weights then come from a local file (``weights=``) or from the hub repo ``spec.hub_id`` via
``hf_hub_download``, and are loaded strictly. This is the same model timm's
``create_model("hf-hub:...", pretrained=True, **kwargs)`` gives, but with strict key checks, a
sha256 identity for the file, and one code path for online and offline use.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from stfeat.encoders._hub import hub_download
from stfeat.encoders._weights import load_strict, read_state_dict, resolve_weights_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from stfeat.encoders.base import EncoderSpec

log = logging.getLogger(__name__)

# Reduced sizes for tests: same block type, registers, patch size and pooling, tiny width/depth.
# 48 keeps SwiGLU hidden sizes even (48 * 5.33334 = 256, 48 * 5.3375 = 256).
TINY_VIT: dict[str, Any] = {"depth": 1, "embed_dim": 48, "num_heads": 2}
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_CLASS_PREFIXES = ("timm.layers.", "torch.nn.")


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn class paths kept as strings in specs (``"timm.layers.SwiGLUPacked"``) into classes."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, str) and v.startswith(_CLASS_PREFIXES):
            mod, _, attr = v.rpartition(".")
            v = getattr(importlib.import_module(mod), attr)
        out[k] = v
    return out


def pool_multiplier(pooling: str) -> int:
    """How many token-width vectors a pooling rule concatenates (``"cls+mean(...)"`` -> 2)."""
    return 1 + pooling.count("+")


def _nn():
    import torch.nn as nn

    return nn


def make_token_pool(model: "torch.nn.Module", mode: str) -> "torch.nn.Module":
    """Wrap a timm ViT built with ``global_pool=''`` (returns all tokens) into a fixed pooling.

    ``mode``: ``"cls"`` = token 0; ``"mean"`` = mean of patch tokens; ``"cls+mean"`` = CLS
    concatenated with the mean of the patch tokens, which start after the CLS and register tokens
    (``model.num_prefix_tokens``: 1 for Virchow, 5 for Virchow2 / H0-mini).
    """
    nn = _nn()

    class TokenPool(nn.Module):
        def __init__(self, inner: nn.Module, how: str) -> None:
            super().__init__()
            if how not in {"cls", "mean", "cls+mean"}:
                raise ValueError(f"unknown token pooling {how!r}")
            self.model = inner
            self.mode = how
            self.prefix = int(getattr(inner, "num_prefix_tokens", 1))

        def forward(self, x):
            import torch

            t = self.model(x)
            if t.ndim != 3:
                raise RuntimeError(f"expected tokens (B, N, C) from a global_pool='' ViT, got {tuple(t.shape)}")
            cls, patch = t[:, 0], t[:, self.prefix :]
            if self.mode == "cls":
                return cls
            if self.mode == "mean":
                return patch.mean(1)
            return torch.cat([cls, patch.mean(1)], dim=-1)

    return TokenPool(model, mode)


def weights_path_for(spec: "EncoderSpec", weights: Path | None, *, pretrained: bool, tiny: bool,
                     hub_files: tuple[str, ...] = HUB_FILES, repo_type: str | None = None) -> Path | None:
    """The file to load: the local one, the hub one (downloaded/cached), or None (random init)."""
    if weights is not None:
        return resolve_weights_file(weights)
    if not pretrained:
        return None
    if tiny:
        raise ValueError(f"{spec.name}: tiny=True builds a reduced test architecture; use pretrained=False")
    if not spec.hub_id:
        from stfeat.errors import InputError

        raise InputError(None, f"{spec.name} has no hub id to download weights from.",
                         f"pass its weights file with --weights PATH or put it in $STFEAT_WEIGHTS_DIR/{spec.name}/.")
    return hub_download(spec.hub_id, hub_files, name=spec.name, gated=spec.gated, repo_type=repo_type)


def local_timm_config(path: Path | None) -> dict[str, Any] | None:
    """timm ``config.json`` next to a weights file (hub snapshot or user folder), if any."""
    if path is None:
        return None
    cfg = path.parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except ValueError:
        log.warning("ignoring unreadable %s", cfg)
        return None


def timm_factory(
    spec: "EncoderSpec",
    weights: Path | None,
    *,
    pretrained: bool = True,
    tiny: bool = False,
    pool: str = "model",
    hub_files: tuple[str, ...] = HUB_FILES,
    ignore_prefixes: tuple[str, ...] = (),
    filter_fn: Callable | None = None,
    wrap: Callable[[Any], Any] | None = None,
    tiny_kwargs: dict[str, Any] | None = None,
    use_config_args: bool = False,
    **overrides: Any,
) -> tuple["torch.nn.Module", Path | None]:
    """Build ``spec.arch`` with ``spec.model_kwargs``, load weights strictly, then pool or wrap.

    Parameters
    ----------
    spec
        Registry entry (``arch`` = timm architecture name).
    weights
        Local weights file or folder; None -> hub (``pretrained=True``) or random.
    pool
        ``"model"`` (the timm model already returns the embedding) or a :func:`make_token_pool` mode.
    ignore_prefixes, filter_fn
        Passed to :func:`~stfeat.encoders._weights.load_strict`.
    wrap
        Module transform applied after loading (e.g. ResNet truncation); overrides ``pool``.
    tiny_kwargs
        Reduced sizes for ``tiny=True`` (default :data:`TINY_VIT`).
    use_config_args
        Fill kwargs missing from the spec from the ``model_args`` of a timm ``config.json`` next to
        the weights (explicit kwargs win, as in timm).
    overrides
        Extra constructor kwargs (win over the spec's).
    """
    import timm

    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=hub_files)
    kw = resolve_kwargs(dict(spec.model_kwargs))
    if use_config_args and not tiny:
        cfg = local_timm_config(path)
        for k, v in ((cfg or {}).get("model_args") or {}).items():
            kw.setdefault(k, v)
    kw.update(overrides)
    if tiny:
        kw.update(TINY_VIT if tiny_kwargs is None else tiny_kwargs)
    model = timm.create_model(spec.arch, pretrained=False, **kw)
    if path is not None:
        load_strict(model, read_state_dict(path), path, what=spec.name,
                    ignore_prefixes=ignore_prefixes, filter_fn=filter_fn)
    if wrap is not None:
        model = wrap(model)
    elif pool != "model":
        model = make_token_pool(model, pool)
    return model, path


def register_timm(spec: "EncoderSpec", *, aliases: tuple[str, ...] = (), **factory_kwargs: Any) -> None:
    """Register a timm-built encoder: :func:`timm_factory` with ``factory_kwargs`` pinned."""
    import functools

    from stfeat.encoders.base import register_encoder

    factory = functools.partial(timm_factory, **factory_kwargs)
    functools.update_wrapper(factory, timm_factory)
    register_encoder(spec, aliases=aliases)(factory)
