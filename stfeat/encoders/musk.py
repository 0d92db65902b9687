"""MUSK (Stanford, Li lab): BEiT-3 multiway ViT-L/16 at 384 px from the optional ``musk`` package.

The architecture comes from the authors' package (``musk.modeling`` registers the timm name
``musk_large_patch16_384``; its torchscale code needs ``fairscale``). Facts: ../shared/ENCODERS.md,
"MUSK" and "Seven more encoders".

Weights: ``model.safetensors`` of ``xiangjx/musk`` (the file ``musk.utils.load_model_and_may_interpolate
("hf_hub:xiangjx/musk", ...)`` fetches), or a local file. stfeat fetches and loads it itself, with
strict keys, instead of calling that function: the musk helper saves the hub file as the generic
``~/.cache/model.safetensors`` (and reuses whatever file has that name) and loads non-strictly, printing
missing keys. Its local-path route reads safetensors only; stfeat's reader also takes ``.pth/.bin``
through ``torch.load(weights_only=True)``.

Two registry entries, one model:

* ``musk``: vision CLS, no head, no normalisation, single scale (``with_head=False, out_norm=False,
  ms_aug=False, return_global=True``) = 1024-d, the pooling of TRIDENT (and of leaderboards built on it).
* ``musk-msaug``: the authors' multi-scale feature for linear probes / MIL (``ms_aug=True``): CLS at
  384 px concatenated with the mean CLS of the 2x-upsampled image split into four 384-px tiles = 2048-d.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from stfeat.encoders._hub import require
from stfeat.encoders._timm import weights_path_for
from stfeat.encoders._weights import load_strict, read_state_dict
from stfeat.encoders.base import HALF_MEAN, HALF_STD, EncoderSpec, register_encoder

# From GitHub: the PyPI project named "musk" is an unrelated package.
MUSK_PIP = "fairscale git+https://github.com/lilab-stanford/MUSK"
MUSK_ARCH = "musk_large_patch16_384"
HUB_FILES = ("model.safetensors",)
# The large config of musk.modeling._get_large_config(img_size=384); tiny builds shrink the sizes only.
_LARGE_CFG: dict[str, Any] = {
    "img_size": 384, "patch_size": 16, "vocab_size": 64010, "multiway": True, "layernorm_embedding": False,
    "normalize_output": True, "no_output_layer": True, "drop_path_rate": 0, "encoder_embed_dim": 1024,
    "encoder_attention_heads": 16, "encoder_ffn_embed_dim": 4096, "encoder_layers": 24,
    "checkpoint_activations": None,
}
_TINY_CFG: dict[str, Any] = {"encoder_embed_dim": 48, "encoder_attention_heads": 2, "encoder_ffn_embed_dim": 192,
                             "encoder_layers": 1}

_NOTE = (
    "BEiT-3 multiway ViT-L/16 at 384 px (vision-language, 24 blocks x 1024) from the optional musk "
    "package (timm name musk_large_patch16_384; needs fairscale). Resize 384 bicubic + CenterCrop 384 in "
    "the reference; mean = std = 0.5 (timm IMAGENET_INCEPTION), fp16 as TRIDENT. Weights: "
    "model.safetensors of xiangjx/musk (gated: accept the terms on the model page), loaded strictly by "
    "stfeat. Pretrained on mixed magnifications (slide2vec lists 0.25/0.5/1.0 um/px; TRIDENT tiles 384 px "
    "at 20x): the training resolution is not verified, 0.5 um/px listed."
)


def _musk_module(spec: EncoderSpec, *, ms_aug: bool, tiny: bool) -> Any:
    """The MUSK model from the musk package, wrapped to map (B, 3, 384, 384) to the vision embedding."""
    import torch.nn as nn

    require("musk", MUSK_PIP, why=f"the {spec.name} encoder")
    require("fairscale", MUSK_PIP, why=f"the {spec.name} encoder")
    modeling = require("musk.modeling", MUSK_PIP, why=f"the {spec.name} encoder")
    if tiny:  # same classes and config keys as the large model, one narrow block
        from musk.torchscale.architecture.config import EncoderConfig

        model = modeling.MUSK(EncoderConfig(**dict(_LARGE_CFG, **_TINY_CFG)))
    else:
        import timm

        model = timm.create_model(MUSK_ARCH, pretrained=False)  # registered by `import musk.modeling`

    class MuskImage(nn.Module):
        """``musk(image=x, with_head=False, out_norm=False, ms_aug=..., return_global=True)[0]``."""

        def __init__(self, m: nn.Module, multiscale: bool) -> None:
            super().__init__()
            self.musk = m
            self.ms_aug = multiscale
            width = int(m.args.encoder_embed_dim)
            self.num_features = 2 * width if multiscale else width

        def forward(self, x):
            return self.musk(image=x, with_head=False, out_norm=False, ms_aug=self.ms_aug, return_global=True)[0]

    return MuskImage(model, ms_aug)


def _fill_fixed_buffers(sd: dict, model: Any) -> dict:
    """Keys musk's own loader tolerates as missing (``relative_position_index``): taken from the model.

    They are index tables the model builds itself; every other key must match strictly.
    """
    own = model.state_dict()
    sd = dict(sd)
    for k, v in own.items():
        if k not in sd and "relative_position_index" in k:
            sd[k] = v
    return sd


def musk_factory(spec: EncoderSpec, weights: Path | None, *, pretrained: bool = True, tiny: bool = False,
                 ms_aug: bool = False, **kwargs: Any) -> tuple[Any, Path | None]:
    """Build MUSK (optional ``musk`` package) and load ``model.safetensors`` (hub or local) strictly."""
    if kwargs:
        raise TypeError(f"{spec.name} takes no constructor overrides, got {sorted(kwargs)}")
    module = _musk_module(spec, ms_aug=ms_aug, tiny=tiny)
    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=HUB_FILES)
    if path is not None:
        load_strict(module.musk, read_state_dict(path), path, what=spec.name, filter_fn=_fill_fixed_buffers)
    return module, path


for _name, _ms, _dim, _pool, _aliases, _extra in (
    ("musk", False, 1024, "cls", ("musk-large", "musk_large", "musk-cls"),
     " Embedding: vision CLS at 384 px without head or normalisation (with_head=False, out_norm=False, "
     "ms_aug=False), TRIDENT's pooling; musk-msaug is the README's multi-scale 2048-d feature."),
    ("musk-msaug", True, 2048, "cls@384+mean(cls of 2x split)", ("musk-ms", "musk-2048", "musk_msaug"),
     " Embedding as in the official README for linear probes / MIL (ms_aug=True, with_head=False, "
     "out_norm=False): CLS at 384 px concatenated with the mean CLS of the image upsampled 2x and split into "
     "four 384-px tiles (5 forward passes per crop). Not TRIDENT's 1024-d pooling (that is musk)."),
):
    register_encoder(
        EncoderSpec(
            name=_name,
            family="musk",
            embed_dim=_dim,
            input_px=384,
            um_per_px=0.5,
            mean=HALF_MEAN,
            std=HALF_STD,
            precision="fp16",
            license="CC-BY-NC-ND-4.0",
            gated=True,
            hub_id="xiangjx/musk",
            arch=MUSK_ARCH,
            pooling=_pool,
            needs=("musk", "fairscale"),
            model_kwargs={"with_head": False, "out_norm": False, "ms_aug": _ms, "return_global": True},
            notes=_NOTE + _extra,
        ),
        aliases=_aliases,
    )(functools.update_wrapper(functools.partial(musk_factory, ms_aug=_ms), musk_factory))
