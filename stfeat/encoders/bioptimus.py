"""Bioptimus encoders: H-optimus-0, H-optimus-1 (ViT-g/14-reg4, 1.1B) and H0-mini (ViT-B/14-reg4)."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import HOPT_MEAN, HOPT_STD, EncoderSpec

_HOPT_KW = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
            "dynamic_img_size": False}

for _name, _hub, _gated, _lic, _aliases, _note in (
    ("h-optimus-0", "bioptimus/H-optimus-0", False, "Apache-2.0", ("hoptimus0", "h_optimus_0", "hoptimus-0"),
     "ViT-g/14 with 4 registers and SwiGLU (40 blocks x 1536, 1.13B) from timm's "
     "vit_giant_patch14_reg4_dinov2; CLS token. Card: 224 px tiles at 0.5 um/px, no resize."),
    ("h-optimus-1", "bioptimus/H-optimus-1", True, "CC-BY-NC-ND-4.0 (non-commercial)",
     ("hoptimus1", "h_optimus_1", "hoptimus-1"),
     "Same architecture and recipe as H-optimus-0, trained on >1M slides."),
):
    register_timm(
        EncoderSpec(
            name=_name,
            family="bioptimus",
            embed_dim=1536,
            input_px=224,
            um_per_px=0.5,
            mean=HOPT_MEAN,
            std=HOPT_STD,
            precision="fp16",
            license=_lic,
            gated=_gated,
            hub_id=_hub,
            arch="vit_giant_patch14_reg4_dinov2",
            pooling="cls",
            model_kwargs=dict(_HOPT_KW),
            notes=_note,
        ),
        aliases=_aliases,
    )

_H0_KW = {"img_size": 224, "num_classes": 0, "global_pool": "", "dynamic_img_size": True,
          "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}
_H0_NOTE = ("ViT-B/14 with 4 registers and SwiGLU, distilled from H-optimus-0 (86M). Tokens = 1 CLS + "
            "4 registers + 256 patches. Sizes not pinned here (mlp_ratio, init_values) come from the "
            "timm config.json beside the weights (hub snapshot or your folder), as timm does.")
# ``h0-mini`` is the pooling of HEST's leaderboard (and TRIDENT's default): CLS only, 768-d.
# The model card's CLS ⊕ patch-mean embedding (1536-d) is ``h0-mini-clsmean``.
for _name, _pool, _dim, _aliases in (
    ("h0-mini", "cls", 768, ("h0mini", "h0_mini", "h0-mini-cls", "h0mini-cls")),
    ("h0-mini-clsmean", "cls+mean", 1536, ("h0-mini-1536", "h0mini-clsmean")),
):
    register_timm(
        EncoderSpec(
            name=_name,
            family="bioptimus",
            embed_dim=_dim,
            input_px=224,
            um_per_px=0.5,
            mean=HOPT_MEAN,
            std=HOPT_STD,
            precision="fp16",
            license="CC-BY-NC-ND-4.0",
            gated=True,
            hub_id="bioptimus/H0-mini",
            arch="vit_base_patch14_reg4_dinov2",
            pooling="cls+mean(tokens[5:])" if _pool == "cls+mean" else "cls",
            model_kwargs=dict(_H0_KW),
            notes=_H0_NOTE + (" Embedding as on the model card: CLS ⊕ patch mean (slide2vec's "
                              "default); not what HEST's leaderboard scores." if _pool != "cls"
                              else " CLS only: the pooling of HEST's leaderboard number and "
                              "TRIDENT's default (use h0-mini-clsmean for the card's 1536-d)."),
        ),
        aliases=_aliases,
        pool=_pool,
        use_config_args=True,
    )
