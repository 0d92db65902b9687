"""``create_encoder``: one entry point for registry names, ``timm:``/``hf-hub:`` names and local files."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from stfeat.encoders.base import Encoder, EncoderSpec, aliases_of, get_factory
from stfeat.errors import InputError

log = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def _looks_like_path(name: str) -> bool:
    from stfeat.encoders._weights import WEIGHT_SUFFIXES

    return os.sep in name or "/" in name or name.lower().endswith(WEIGHT_SUFFIXES) or name.startswith(("~", "."))


def create_encoder(
    name_or_path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    device: Any = "cpu",
    pretrained: bool = True,
    tiny: bool = False,
    **kwargs: Any,
) -> Encoder:
    """Build an encoder ready to embed uint8 crops.

    Parameters
    ----------
    name_or_path
        A registry name (``"uni"``, ``"virchow2"``, ``"densenet121"``, ``"classical"``; see
        ``stfeat encoders``), ``"timm:NAME"`` (any timm model, pooled, no classifier),
        ``"hf-hub:ORG/NAME"`` (a timm model on the Hugging Face Hub), or a local weights file/folder
        (a folder with a timm ``config.json``, or a file plus ``arch="timm_name"``).
    weights
        Local weights file or folder for a registry encoder (strictly loaded). Without it, a
        registry encoder looks in ``$STFEAT_WEIGHTS_DIR/<name>`` (folder or ``<name>.safetensors``
        / ``.pth`` / ``.bin``), then downloads from its hub repo when ``pretrained``.
    device
        Where the model lives (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    pretrained
        False builds the architecture with random weights (``weights_id == "random"``).
    tiny
        Build the same architecture with reduced depth/width and random weights (tests); the
        returned spec's ``embed_dim`` is the reduced one.
    **kwargs
        Passed to the encoder's factory (e.g. constructor overrides, ``trust_remote_code=True``).

    Returns
    -------
    Encoder
        ``encoder(x_uint8)`` -> float32 (B, embed_dim); ``encoder.weights_id`` = ``"sha256:..."``,
        ``"random"`` or ``"none"``.

    Raises
    ------
    UnknownEncoderError
        Unknown name (the message suggests close names).
    InputError
        Bad weights file (missing/unexpected keys are listed), or hub weights that cannot be had
        (:class:`~stfeat.encoders._hub.HubAccessError` says how to get access).
    MissingDependencyError
        The encoder needs an optional package; the message gives the ``pip install`` command.
    """
    from stfeat.encoders import _load_all  # noqa: F401  (registers every family)
    from stfeat.encoders import generic
    from stfeat.encoders._weights import find_local_weights, weights_id
    from stfeat.encoders.base import _resolve_name

    name = os.fspath(name_or_path)
    if tiny:
        pretrained = False
    if name.startswith("timm:"):
        enc = generic.create_timm_encoder(name[len("timm:"):], weights=weights, pretrained=pretrained, **kwargs)
    elif name.startswith(HUB_PREFIXES):
        enc = generic.create_hub_encoder(name.split(":", 1)[1], weights=weights, pretrained=pretrained, **kwargs)
    elif _resolve_name(name) is None and (Path(name).expanduser().exists() or _looks_like_path(name)):
        if weights is not None:
            raise InputError(name, "a weights path was given twice (as the encoder and as weights=).",
                             "pass a registry name with weights=PATH, or only the path.")
        enc = generic.create_path_encoder(Path(name).expanduser(), **kwargs)
    else:
        spec, factory = get_factory(name)
        wpath = Path(weights).expanduser() if weights is not None else None
        if wpath is None and pretrained and spec.family != "classical":
            hub_base = spec.hub_id.rsplit("/", 1)[-1] if spec.hub_id else ""
            wpath = find_local_weights([spec.name, *aliases_of(spec.name), hub_base])
            if wpath is not None:
                log.info("%s: using weights from $STFEAT_WEIGHTS_DIR: %s", spec.name, wpath)
        model, path = factory(spec, wpath, pretrained=pretrained, tiny=tiny, **kwargs)
        if tiny:
            spec = dataclasses.replace(spec, embed_dim=_probe_dim(model, spec))
        enc = Encoder(spec, model, "none" if spec.family == "classical" else weights_id(path))
        enc.source = str(path) if path is not None else None
    return enc.to(device)


def _probe_dim(model: Any, spec: EncoderSpec) -> int:
    """Output width of a (small) model, by one forward pass on a blank image."""
    import torch

    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, spec.input_px, spec.input_px))
    return int(out.shape[-1])
