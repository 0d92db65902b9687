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

# ViT-B/16 and ViT-L/14 of the same release (ENCODERS.md, "Seven more encoders"): timm builds as in
# TRIDENT's KaikoInferenceEncoder; CLS token (timm's global_pool="token"), mean = std = 0.5, fp32.
register_timm(
    EncoderSpec(
        name="kaiko-vitb16",
        family="kaiko",
        embed_dim=768,
        input_px=224,
        um_per_px=0.5,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp32",
        license="kaiko-non-commercial (Kaiko Non-Commercial v1)",
        gated=False,
        hub_id="1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
        arch="vit_base_patch16_224",
        pooling="cls",
        model_kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        notes="ViT-B/16, CLS; Resize + CenterCrop 224, mean = std = 0.5. Original weights: GitHub "
        "release kaiko-ai/towards_large_pathology_fms 0.0.1 vitb16.pth. Training resolution not "
        "verified (the paper reports mixed magnifications); 0.5 um/px listed.",
    ),
    aliases=("kaiko_vitb16", "kaiko-b16"),
)

register_timm(
    EncoderSpec(
        name="kaiko-vitl14",
        family="kaiko",
        embed_dim=1024,
        input_px=224,
        um_per_px=0.5,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp32",
        license="kaiko-non-commercial (Kaiko Non-Commercial v1)",
        gated=False,
        hub_id="1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms",
        arch="vit_large_patch14_reg4_dinov2",
        pooling="cls",
        model_kwargs={"img_size": 518, "num_classes": 0, "dynamic_img_size": True},
        notes="ViT-L/14 with 4 registers (DINOv2), CLS; built at 518 px as TRIDENT does and fed "
        "224 px through dynamic_img_size. Hub id as in TRIDENT; the Hugging Face docs now show the "
        "mirror as 1aurent/vit_large_patch14_reg4_224.kaiko_ai_towards_large_pathology_fms (the old "
        "name appears to redirect: not verified). Original weights: GitHub release vitl14.pth. "
        "Training resolution not verified; 0.5 um/px listed.",
    ),
    aliases=("kaiko_vitl14", "kaiko-l14"),
)
