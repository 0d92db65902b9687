"""Owkin encoders: Phikon (iBOT ViT-B/16) and Phikon-v2 (DINOv2 ViT-L/16), transformers models, CLS."""

from __future__ import annotations

from stfeat.encoders._hf import register_hf
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec

_TINY = {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 96}

register_hf(
    EncoderSpec(
        name="phikon",
        family="owkin",
        embed_dim=768,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp32",
        license="Owkin non-commercial",
        gated=False,
        hub_id="owkin/phikon",
        arch="transformers.ViTModel",
        pooling="cls",
        needs=("transformers",),
        model_kwargs={"add_pooling_layer": False},
        notes="iBOT ViT-B/16 (86M) on 40M TCGA tiles at 20x; last_hidden_state[:, 0].",
    ),
    aliases=("phikon-v1", "phikon_v1"),
    model_cls="ViTModel",
    config_cls="ViTConfig",
    full_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "intermediate_size": 3072, "image_size": 224, "patch_size": 16, "qkv_bias": True},
    tiny_config=dict(_TINY, image_size=224, patch_size=16),
    init_kwargs={"add_pooling_layer": False},
    ignore_prefixes=("pooler.",),
)

register_hf(
    EncoderSpec(
        name="phikon-v2",
        family="owkin",
        embed_dim=1024,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp32",
        license="Owkin non-commercial",
        gated=False,
        hub_id="owkin/phikon-v2",
        arch="transformers.Dinov2Model",
        pooling="cls",
        needs=("transformers",),
        notes="DINOv2 ViT-L/16 (303M) on PANCAN-XL (450M tiles at 20x); last_hidden_state[:, 0].",
    ),
    aliases=("phikon_v2", "phikonv2"),
    model_cls="Dinov2Model",
    config_cls="Dinov2Config",
    full_config={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                 "image_size": 224, "patch_size": 16, "layerscale_value": 1e-5},
    tiny_config={"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 224,
                 "patch_size": 16},
)
