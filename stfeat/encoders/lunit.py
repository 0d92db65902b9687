"""Lunit DINO ViT-S/8 (benchmark-ssl-pathology), as timm weights on the Hugging Face Hub (1aurent)."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import LUNIT_MEAN, LUNIT_STD, EncoderSpec

register_timm(
    EncoderSpec(
        name="lunit-vits8",
        family="lunit",
        embed_dim=384,
        input_px=224,
        um_per_px=0.5,
        mean=LUNIT_MEAN,
        std=LUNIT_STD,
        precision="fp32",
        license="lunit-non-commercial",
        gated=False,
        hub_id="1aurent/vit_small_patch8_224.lunit_dino",
        arch="vit_small_patch8_224",
        pooling="cls",
        model_kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        notes="DINO ViT-S/8 (22M), CLS. Normalised with Lunit's training statistics (as kaiko eva), "
        "not the hub config's; headless checkpoint (num_classes=0).",
    ),
    aliases=("lunit", "lunit_vits8", "lunit-dino"),
)
