"""Prov-GigaPath tile encoder: ViT-g with patch size 16 (not 14), CLS 1536."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec

register_timm(
    EncoderSpec(
        name="gigapath",
        family="providence",
        embed_dim=1536,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        license="Apache-2.0 (with gate conditions)",
        gated=True,
        hub_id="prov-gigapath/prov-gigapath",
        arch="vit_giant_patch14_dinov2",
        pooling="cls",
        model_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                      "num_heads": 24, "mlp_ratio": 5.33334, "init_values": 1e-5, "num_classes": 0,
                      "dynamic_img_size": True},
        notes="Tile encoder (1.13B): 40 blocks x 1536, SwiGLU from the dinov2 arch, patch 16 despite the "
        "name. Authors resize a 256 px tile at 0.5 um/px and centre-crop 224; stfeat reads the 224 px "
        "field directly at 0.5 um/px (same pixels).",
    ),
    aliases=("prov-gigapath", "gigapath-tile", "prov_gigapath"),
)
