"""kaiko.ai "towards large pathology FMs" ViTs, as timm weights on the Hugging Face Hub (1aurent)."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import HALF_MEAN, HALF_STD, EncoderSpec

register_timm(
    EncoderSpec(
        name="kaiko-vitb8",
        family="kaiko",
        embed_dim=768,
        input_px=224,
        um_per_px=0.5,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp32",
        license="kaiko-non-commercial",
        gated=False,
        hub_id="1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms",
        arch="vit_base_patch8_224",
        pooling="cls",
        model_kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        notes="ViT-B/8 (86M), CLS; mean = std = 0.5. Resolution not stated by the authors (TRIDENT "
        "tiles 256 px at 20x); 0.5 um/px listed.",
    ),
    aliases=("kaiko", "kaiko_vitb8", "kaiko-b8"),
)
