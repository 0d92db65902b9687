"""Encoders that are ``transformers`` models (Phikon, Phikon-v2, Hibou, Midnight).

The model class is built from the repo's ``config.json`` (hub snapshot or the user's folder), or from
the pinned ``full_config`` when only a weights file is given; weights are then loaded with stfeat's
strict loader (never transformers' lenient one), so a wrong file fails with the offending keys.
``trust_remote_code`` is off unless the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from stfeat.encoders._hub import hub_download, require
from stfeat.encoders._timm import HUB_FILES, weights_path_for
from stfeat.encoders._weights import load_strict, read_state_dict
from stfeat.encoders.base import EncoderSpec, register_encoder

TRANSFORMERS_PIP = "'transformers>=4.40'"


def _hf_pool(model: Any, mode: str, prefix: int) -> Any:
    import torch
    import torch.nn as nn

    class HFPool(nn.Module):
        """last_hidden_state -> CLS, or CLS ⊕ mean(patch tokens) (patch tokens start at ``prefix``)."""

        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.model = m
            self.mode = mode
            self.prefix = prefix

        def forward(self, x):
            t = self.model(pixel_values=x).last_hidden_state
            if self.mode == "cls":
                return t[:, 0]
            return torch.cat([t[:, 0], t[:, self.prefix:].mean(1)], dim=-1)

    return HFPool(model)


def hf_factory(
    spec: EncoderSpec,
    weights: Path | None,
    *,
    pretrained: bool = True,
    tiny: bool = False,
    model_cls: str,
    config_cls: str,
    full_config: dict[str, Any],
    tiny_config: dict[str, Any],
    pool: str = "cls",
    init_kwargs: dict[str, Any] | None = None,
    ignore_prefixes: tuple[str, ...] = (),
    trust_remote_code: bool = False,
    **overrides: Any,
) -> tuple[Any, Path | None]:
    """Build a transformers vision model and load its weights strictly (see module docstring)."""
    tf = require("transformers", TRANSFORMERS_PIP, why=f"the {spec.name} encoder")
    init_kwargs = dict(init_kwargs or {})
    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=HUB_FILES)
    cfg_dict: dict[str, Any] | None = None
    if path is not None:
        cfg_file = path.parent / "config.json"
        if weights is None and pretrained and not cfg_file.is_file():  # hub snapshot: fetch its config too
            cfg_file = hub_download(spec.hub_id, ["config.json"], name=spec.name, gated=spec.gated)
        if cfg_file.is_file():
            cfg_dict = json.loads(cfg_file.read_text())
    if trust_remote_code and path is not None:
        # The user asked for the repo's own modelling code (e.g. Hibou's custom DINOv2).
        model = tf.AutoModel.from_pretrained(str(path.parent), trust_remote_code=True, local_files_only=True)
        model_keys_from = model
    else:
        base = dict(tiny_config if tiny else full_config)
        if cfg_dict is not None:
            base.update({k: v for k, v in cfg_dict.items() if not k.startswith("_") and k not in
                         ("architectures", "auto_map", "model_type", "transformers_version")})
        base.update(overrides)
        config = getattr(tf, config_cls)(**base)
        model = getattr(tf, model_cls)(config, **init_kwargs)
        model_keys_from = model
    if path is not None:
        sd = read_state_dict(path)
        prefix = f"{getattr(model_keys_from, 'base_model_prefix', '')}."
        if prefix != "." and sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
        fix_hint = "" if trust_remote_code else " (for repos with custom code, trust_remote_code=True)"
        load_strict(model, sd, path, what=spec.name + fix_hint, ignore_prefixes=ignore_prefixes)
    n_reg = int(getattr(model.config, "num_register_tokens", 0) or 0)
    return _hf_pool(model.eval(), pool, 1 + n_reg), path


def register_hf(spec: EncoderSpec, *, aliases: tuple[str, ...] = (), **factory_kwargs: Any) -> None:
    """Register a transformers-built encoder: :func:`hf_factory` with ``factory_kwargs`` pinned."""
    factory = functools.partial(hf_factory, **factory_kwargs)
    functools.update_wrapper(factory, hf_factory)
    register_encoder(spec, aliases=aliases)(factory)
