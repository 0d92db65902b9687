"""Paige encoders: Virchow and Virchow2 (ViT-H/14, SwiGLU), embedding = CLS ⊕ mean(patch tokens) = 2560."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec

_VIRCHOW_KW = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
               "dynamic_img_size": True, "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}

register_timm(
    EncoderSpec(
        name="virchow",
        family="paige",
        embed_dim=2560,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        license="Apache-2.0 (with gate terms)",
        gated=True,
        hub_id="paige-ai/Virchow",
        arch="vit_huge_patch14_224",
        pooling="cls+mean(tokens[1:])",
        model_kwargs=dict(_VIRCHOW_KW),
        notes="ViT-H/14, 32 blocks x 1280, SwiGLU, LayerScale, no registers (631M). Tokens: 1 CLS + 256 "
        "patches; the embedding concatenates CLS and the patch mean (2 x 1280).",
    ),
    aliases=("virchow1", "virchow_v1"),
    pool="cls+mean",
)

register_timm(
    EncoderSpec(
        name="virchow2",
        family="paige",
        embed_dim=2560,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        license="CC-BY-NC-ND-4.0",
        gated=True,
        hub_id="paige-ai/Virchow2",
        arch="vit_huge_patch14_224",
        pooling="cls+mean(tokens[5:])",
        model_kwargs=dict(_VIRCHOW_KW, reg_tokens=4),
        notes="As Virchow plus 4 register tokens: tokens = 1 CLS + 4 registers + 256 patches, so the "
        "patch mean starts at index 5 (num_prefix_tokens). Trained on mixed magnifications "
        "(5/10/20/40x, i.e. ~2 to 0.25 um/px); 0.5 um/px listed as the nominal resolution.",
    ),
    aliases=("virchow-2", "virchow_v2"),
    pool="cls+mean",
)
