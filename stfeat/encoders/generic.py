"""Encoders outside the registry: ``timm:NAME``, ``hf-hub:ORG/NAME`` and local weights files.

The spec is derived from timm's pretrained config (input size, mean/std, license, hub id) and the
model's pooled feature width. The classifier is always removed (``num_classes=0``) and classifier
keys in a weights file are ignored; every other key must match.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stfeat.encoders._hub import hub_config, hub_download
from stfeat.encoders._timm import HUB_FILES
from stfeat.encoders._weights import load_strict, read_state_dict, resolve_weights_file, weights_id
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderSpec
from stfeat.errors import InputError

log = logging.getLogger(__name__)


def _spec_from_model(name: str, model: Any, *, family: str, hub_id: str | None, arch: str,
                     cfg: dict[str, Any] | None = None, kwargs: dict[str, Any] | None = None) -> EncoderSpec:
    pcfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pcfg.update(cfg or {})
    size = pcfg.get("input_size") or (3, 224, 224)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    conv = not hasattr(model, "patch_embed")
    return EncoderSpec(
        name=name,
        family=family,
        embed_dim=dim,
        input_px=int(size[-1]),
        um_per_px=None,
        mean=tuple(float(v) for v in pcfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in pcfg.get("std", IMAGENET_STD)),
        precision="fp32",
        license=str(pcfg.get("license", "unknown")),
        gated=False,
        hub_id=hub_id,
        arch=arch,
        pooling="timm default pooling (num_classes=0)",
        model_kwargs={k: v for k, v in (kwargs or {}).items() if isinstance(v, (int, float, str, bool, type(None)))},
        channels_last=conv,
    )


def _classifier_prefixes(model: Any) -> tuple[str, ...]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    clf = clf if isinstance(clf, (list, tuple)) else [clf]
    return tuple(f"{c}." for c in clf)


def _finish(name: str, model: Any, spec: EncoderSpec, path: Path | None) -> Encoder:
    if path is not None:
        load_strict(model, read_state_dict(path), path, what=name, ignore_prefixes=_classifier_prefixes(model))
    enc = Encoder(spec, model, weights_id(path))
    enc.source = str(path) if path else None
    return enc


def create_timm_encoder(arch: str, *, weights: Any = None, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """Any timm model by name, pooled, without classifier; weights local or from its timm hub repo."""
    import timm

    if not timm.is_model(arch.split(".")[0]):
        raise InputError(None, f"timm has no model {arch!r}.", "list names with timm.list_models('pattern*').")
    kwargs.setdefault("num_classes", 0)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    hub_id = (model.pretrained_cfg or {}).get("hf_hub_id")
    path = None
    if weights is not None:
        path = resolve_weights_file(weights)
    elif pretrained:
        if not hub_id:
            raise InputError(None, f"timm model {arch!r} has no Hugging Face Hub weights.",
                             "pass weights=PATH / --weights PATH, or choose a tag with hub weights (NAME.TAG).")
        path = hub_download(hub_id, HUB_FILES, name=f"timm:{arch}")
    spec = _spec_from_model(f"timm:{arch}", model, family="timm", hub_id=hub_id, arch=arch, kwargs=kwargs)
    return _finish(spec.name, model, spec, path)


def _build_from_config(cfg: dict[str, Any], where: str, **kwargs: Any) -> Any:
    import timm

    arch = cfg.get("architecture") or cfg.get("model_name")
    if not arch:
        raise InputError(where, "config.json names no timm 'architecture'.",
                         "use a timm-format repo/folder, or a registry name with --weights.")
    margs = dict(cfg.get("model_args") or {})
    margs.update(kwargs)
    margs["num_classes"] = 0
    try:
        return arch, timm.create_model(arch, pretrained=False, **margs)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for bad configs
        raise InputError(where, f"timm could not build {arch!r} from its config.json ({exc}).",
                         "check the config's architecture/model_args match your timm version.") from None


def create_hub_encoder(repo_id: str, *, weights: Any = None, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """A timm model hosted on the Hugging Face Hub (``config.json`` + weights), like timm's ``hf-hub:``."""
    name = f"hf-hub:{repo_id}"
    cfg = hub_config(repo_id, name=name)
    if cfg is None:
        raise InputError(None, f"{repo_id} has no timm config.json.",
                         "use a registry name (stfeat encoders) for non-timm models, e.g. transformers ones.")
    arch, model = _build_from_config(cfg, repo_id, **kwargs)
    path = resolve_weights_file(weights) if weights is not None else (
        hub_download(repo_id, HUB_FILES, name=name) if pretrained else None)
    spec = _spec_from_model(name, model, family="hf-hub", hub_id=repo_id, arch=arch,
                            cfg=cfg.get("pretrained_cfg"), kwargs=cfg.get("model_args"))
    return _finish(name, model, spec, path)


def create_path_encoder(path: Path, *, arch: str | None = None, **kwargs: Any) -> Encoder:
    """A local weights file or folder: timm ``config.json`` beside it, or ``arch=`` names the timm model."""
    import timm

    if not path.exists():
        raise InputError(path, "does not exist (and is not a registered encoder name).",
                         "check the path, or run `stfeat encoders` for registered names.")
    wfile = resolve_weights_file(path)
    cfg_path = (path if path.is_dir() else path.parent) / "config.json"
    if arch is not None:
        kwargs.setdefault("num_classes", 0)
        model = timm.create_model(arch, pretrained=False, **kwargs)
        cfg = None
    elif cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        arch, model = _build_from_config(cfg, str(cfg_path), **kwargs)
    else:
        raise InputError(
            wfile,
            "the architecture of this weights file is unknown (no timm config.json beside it).",
            "pass a registry name with the weights (create_encoder('uni', weights=PATH) / "
            "--encoder uni --weights PATH), or arch='timm_model_name'.",
        )
    spec = _spec_from_model(f"local:{wfile.name}", model, family="local", hub_id=None, arch=arch,
                            cfg=(cfg or {}).get("pretrained_cfg"), kwargs=kwargs)
    return _finish(spec.name, model, spec, wfile)
