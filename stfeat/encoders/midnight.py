"""kaiko.ai Midnight-12k: DINOv2 ViT-g/14 (transformers), embedding CLS ⊕ mean(patch tokens) = 3072."""

from __future__ import annotations

from stfeat.encoders._hf import register_hf
from stfeat.encoders.base import HALF_MEAN, HALF_STD, EncoderSpec

register_hf(
    EncoderSpec(
        name="midnight",
        family="kaiko",
        embed_dim=3072,
        input_px=224,
        um_per_px=0.5,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp16",
        license="MIT",
        gated=False,
        hub_id="kaiko-ai/midnight",
        arch="transformers.Dinov2Model",
        pooling="cls+mean(tokens[1:])",
        needs=("transformers",),
        notes="Midnight-12k (1.1B, trained at 0.25-2 um/px on 224 px tiles); embedding as on the model "
        "card: CLS ⊕ mean of patch tokens (no registers). TRIDENT's code default is CLS only (1536).",
    ),
    aliases=("midnight12k", "midnight-12k", "kaiko-midnight"),
    model_cls="Dinov2Model",
    config_cls="Dinov2Config",
    full_config={"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "mlp_ratio": 4,
                 "image_size": 224, "patch_size": 14, "use_swiglu_ffn": True},
    tiny_config={"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 224,
                 "patch_size": 14, "use_swiglu_ffn": True},
    pool="cls+mean",
)
