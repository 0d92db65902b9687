"""Mahmood Lab encoders: UNI, UNI2-h (timm), CONCH v1 (``conch`` package), CONCH v1.5 (vision tower).

Constructor kwargs follow the authors' READMEs (UNI repo, TRIDENT); see /work/shared/ENCODERS.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stfeat.encoders._hub import require
from stfeat.encoders._timm import TINY_VIT, register_timm, weights_path_for
from stfeat.encoders._weights import load_strict, read_state_dict
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, EncoderSpec, register_encoder

_NC_ND = "CC-BY-NC-ND-4.0"

register_timm(
    EncoderSpec(
        name="uni",
        family="mahmood",
        embed_dim=1024,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        license=_NC_ND,
        gated=True,
        hub_id="MahmoodLab/UNI",
        arch="vit_large_patch16_224",
        pooling="cls",
        model_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                      "dynamic_img_size": True},
        notes="ViT-L/16 (DINOv2 on Mass-100K), 303M params. init_values must be set so LayerScale gammas load.",
    ),
    aliases=("uni_v1", "uni-v1", "uni1"),
    hub_files=("pytorch_model.bin", "model.safetensors"),
)

register_timm(
    EncoderSpec(
        name="uni2-h",
        family="mahmood",
        embed_dim=1536,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="bf16",
        license=_NC_ND,
        gated=True,
        hub_id="MahmoodLab/UNI2-h",
        arch="vit_giant_patch14_224",
        pooling="cls",
        model_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                      "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                      "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU", "reg_tokens": 8,
                      "dynamic_img_size": True},
        notes="ViT-h/14 with 8 registers and SwiGLU, 24 blocks x 1536 (681M params); built from the "
        "vit_giant_patch14_224 name with every size overridden. bf16 as in TRIDENT.",
    ),
    aliases=("uni2", "uni_v2", "uni2h"),
    hub_files=("pytorch_model.bin", "model.safetensors"),
)


# --------------------------------------------------------------------------------------------------
# CONCH v1.5: timm ViT-L/16 trunk at 448 px + one-query attentional pooler + LayerNorm -> 768.
# --------------------------------------------------------------------------------------------------


def _conch_tower(tiny: bool) -> Any:
    import timm
    import torch
    import torch.nn as nn

    class AttentionalPooler(nn.Module):
        """CoCa attentional pooler (queries attend to LayerNormed tokens); key names as CONCH's."""

        def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.heads = n_head
            dim_head = d_model // n_head
            self.scale = dim_head**-0.5
            self.ln_k = nn.LayerNorm(context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, dim_head * n_head, bias=False)
            self.to_kv = nn.Linear(context_dim, dim_head * n_head * 2, bias=False)
            self.to_out = nn.Linear(dim_head * n_head, d_model, bias=False)

        def forward(self, x):  # x: (B, N, context_dim) -> (B, n_queries, d_model)
            b, n, _ = x.shape
            h = self.heads
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
            k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
            q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
            attn = (q * self.scale) @ k.transpose(-1, -2)
            attn = (attn - attn.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
            return self.to_out(out)

    class ConchVisionTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kw = dict(img_size=448, num_classes=0, init_values=1.0, dynamic_img_size=True)
            if tiny:
                kw.update(TINY_VIT)
            self.trunk = timm.create_model("vit_large_patch16_224", pretrained=False, **kw)
            d_model = 32 if tiny else 768
            self.attn_pool_contrast = AttentionalPooler(d_model, self.trunk.num_features, n_head=2 if tiny else 8)
            self.ln_contrast = nn.LayerNorm(d_model)

        def forward(self, x):
            tokens = self.trunk.forward_features(x)
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])

    return ConchVisionTower()


def _resample_pos(sd: dict, model: Any) -> dict:
    """Resample ``trunk.pos_embed`` to the 448 px grid when the file holds another grid."""
    from timm.layers import resample_abs_pos_embed

    key = "trunk.pos_embed"
    want = model.trunk.pos_embed.shape
    if key in sd and sd[key].shape != want:
        sd = dict(sd)
        sd[key] = resample_abs_pos_embed(sd[key], new_size=model.trunk.patch_embed.grid_size,
                                         num_prefix_tokens=model.trunk.num_prefix_tokens)
    return sd


@register_encoder(
    EncoderSpec(
        name="conch-v1.5",
        family="mahmood",
        embed_dim=768,
        input_px=448,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        license=_NC_ND,
        gated=True,
        hub_id="MahmoodLab/conchv1_5",
        arch="vit_large_patch16_224",
        pooling="attnpool(1 query)+LN",
        model_kwargs={"img_size": 448, "num_classes": 0, "init_values": 1.0, "dynamic_img_size": True,
                      "pooler": {"d_model": 768, "n_head": 8, "n_queries": 1}},
        notes="CONCH v1.5 vision tower (as in TRIDENT): ViT-L/16 trunk at 448 px, contrastive attentional "
        "pooler and LayerNorm, no projection. Weights: pytorch_model_vision.bin.",
    ),
    aliases=("conchv1_5", "conch_v15", "conch-v15", "conchv15"),
)
def _conch_v15(spec: EncoderSpec, weights: Path | None, *, pretrained: bool = True, tiny: bool = False,
               **kwargs: Any) -> tuple[Any, Path | None]:
    if kwargs:
        raise TypeError(f"{spec.name} takes no constructor overrides, got {sorted(kwargs)}")
    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=("pytorch_model_vision.bin",))
    model = _conch_tower(tiny)
    if path is not None:
        load_strict(model, read_state_dict(path), path, what=spec.name, filter_fn=_resample_pos)
    return model, path


# --------------------------------------------------------------------------------------------------
# CONCH v1: CoCa from the `conch` package; features before the contrastive projection.
# --------------------------------------------------------------------------------------------------

CONCH_PIP = "git+https://github.com/Mahmoodlab/CONCH.git"


@register_encoder(
    EncoderSpec(
        name="conch",
        family="mahmood",
        embed_dim=512,
        input_px=448,
        um_per_px=0.5,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        precision="fp32",
        license=_NC_ND,
        gated=True,
        hub_id="MahmoodLab/CONCH",
        arch="conch_ViT-B-16",
        pooling="attnpool(1 query)+LN, no projection",
        needs=("conch",),
        model_kwargs={"proj_contrast": False, "normalize": False},
        notes="CoCa visual tower (ViT-B/16 at 448 px) from the conch package; encode_image(x, "
        "proj_contrast=False, normalize=False) as TRIDENT/HEST (the projected space is for zero-shot).",
    ),
    aliases=("conch-v1", "conch_v1", "conchv1"),
)
def _conch_v1(spec: EncoderSpec, weights: Path | None, *, pretrained: bool = True, tiny: bool = False,
              **kwargs: Any) -> tuple[Any, Path | None]:
    import json

    import torch.nn as nn

    require("conch.open_clip_custom", CONCH_PIP, why="CONCH v1")
    from conch.open_clip_custom import coca_model, factory

    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=("pytorch_model.bin",))
    cfg = json.loads((Path(factory.CFG_DIR) / f"{spec.arch}.json").read_text())
    cfg.pop("custom_text", None)
    if tiny:  # same towers and widths, one block each
        for part in ("vision_cfg", "text_cfg", "multimodal_cfg"):
            cfg[part]["layers"] = 1
    coca = coca_model.CoCa(**cfg)
    if path is not None:
        def _filter(sd: dict, model: Any) -> dict:
            coca_model.resize_pos_embed(sd, model)
            return sd

        load_strict(coca, read_state_dict(path), path, what=spec.name, filter_fn=_filter)

    class ConchImage(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.coca = m

        def forward(self, x):
            return self.coca.encode_image(x, proj_contrast=False, normalize=False)

    return ConchImage(coca), path
