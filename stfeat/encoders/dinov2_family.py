"""DINOv2-trained pathology ViTs loaded into timm: GPFM (ViT-L/14) and OpenMidnight (ViT-g/14-reg4).

Both ship checkpoints of DINOv2's own code (``backbone.``-prefixed keys, ``mask_token``,
``register_tokens``, SwiGLU ``w12``/``w3``), or already timm-shaped ones. :func:`dinov2_filter` strips
the prefix and hands the rest to timm's own DINOv2 converter (``checkpoint_filter_fn``), so either
layout loads strictly into the timm architecture. Facts: ../shared/ENCODERS.md, "Seven more
encoders".
"""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import EncoderSpec


def dinov2_filter(state_dict, model):
    """DINOv2-code or timm checkpoint -> timm keys (prefix ``backbone.`` dropped, then timm's converter)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = dict(state_dict)
    if sd and all(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items()}
    return checkpoint_filter_fn(sd, model)


register_timm(
    EncoderSpec(
        name="gpfm",
        family="gpfm",
        embed_dim=1024,
        input_px=224,
        um_per_px=0.5,
        precision="fp16",
        license="CC-BY-NC-ND-4.0",
        gated=False,
        hub_id="majiabo/GPFM",
        arch="vit_large_patch14_dinov2",
        pooling="cls",
        model_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                      "dynamic_img_size": True},
        notes="GPFM (DINOv2 ViT-L/14), CLS token, ImageNet mean/std, Resize 224 bicubic (TRIDENT; "
        "the official repo prefers 512 px level-0 tiles resized to 224). Hub file GPFM.pth; the "
        "GitHub-release GPFM.pth is another layout (['teacher'], backbone. prefix), also accepted. "
        "Training resolution: 512 px at level 0 resized to 224 (about 0.57 um/px at 40x) is an "
        "inference in ENCODERS.md, not verified; 0.5 um/px listed.",
    ),
    aliases=("gpfm-vitl14",),
    hub_files=("GPFM.pth",),
    filter_fn=dinov2_filter,
)

register_timm(
    EncoderSpec(
        name="openmidnight",
        family="openmidnight",
        embed_dim=1536,
        input_px=224,
        um_per_px=0.5,
        precision="fp16",
        license="Apache-2.0 (code; weights per lazyslide-models)",
        gated=True,
        hub_id="SophontAI/OpenMidnight",
        arch="vit_giant_patch14_reg4_dinov2",
        pooling="cls",
        model_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                      "dynamic_img_size": False},
        notes="OpenMidnight: DINOv2 ViT-g/14 with 4 registers (dinov2_vitg14_reg) trained on TCGA "
        "at 224 px, with the checkpoint's own 224-px pos_embed; embedding x_norm_clstoken = timm's "
        "normed CLS (1536). Resize 224, ImageNet mean/std, fp16 (TRIDENT). Patches were read at every "
        "pyramid level, so there is no single training resolution; 0.5 um/px listed. Hub file "
        "teacher_checkpoint_load.pt; its key layout is not documented in ENCODERS.md: DINOv2-code "
        "keys are converted, anything else fails the strict load by name.",
    ),
    aliases=("open-midnight", "open_midnight"),
    hub_files=("teacher_checkpoint_load.pt",),
    filter_fn=dinov2_filter,
)
