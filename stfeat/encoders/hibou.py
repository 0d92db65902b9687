"""HistAI Hibou-B / Hibou-L: DINOv2 ViT/14 with 4 registers, transformers models, CLS.

The repos ship custom modelling code. stfeat loads the weights into transformers' own
``Dinov2WithRegistersModel`` with strict keys; pass ``trust_remote_code=True`` to use the repo's code
instead (only if you trust it).
"""

from __future__ import annotations

from stfeat.encoders._hf import register_hf
from stfeat.encoders.base import HIBOU_MEAN, HIBOU_STD, EncoderSpec

for _name, _hub, _dim, _layers, _heads, _aliases, _gated in (
    ("hibou-b", "histai/hibou-b", 768, 12, 12, ("hibou_b", "hiboub"), False),
    ("hibou-l", "histai/hibou-L", 1024, 24, 16, ("hibou_l", "hiboul", "hibou"), True),
):
    register_hf(
        EncoderSpec(
            name=_name,
            family="histai",
            embed_dim=_dim,
            input_px=224,
            um_per_px=0.5,
            mean=HIBOU_MEAN,
            std=HIBOU_STD,
            precision="fp32",
            license="Apache-2.0",
            gated=_gated,
            hub_id=_hub,
            arch="transformers.Dinov2WithRegistersModel",
            pooling="cls",
            needs=("transformers",),
            notes=f"DINOv2 ViT-{'B' if _dim == 768 else 'L'}/14 + 4 registers; CLS after the final "
            "LayerNorm (= the repo's pooler_output). Gate: click-through on the model page.",
        ),
        aliases=_aliases,
        model_cls="Dinov2WithRegistersModel",
        config_cls="Dinov2WithRegistersConfig",
        full_config={"hidden_size": _dim, "num_hidden_layers": _layers, "num_attention_heads": _heads,
                     "mlp_ratio": 4, "image_size": 224, "patch_size": 14, "num_register_tokens": 4},
        tiny_config={"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 224,
                     "patch_size": 14, "num_register_tokens": 4},
    )
