"""Ciga et al.'s self-supervised histology ResNet-18 ("tenpercent"), NH2ST's image encoder."""

from __future__ import annotations

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import EncoderSpec


def tenpercent_filter(state_dict, model):
    """Strip the ``model.`` / ``resnet.`` prefixes of the Lightning checkpoint (as the authors' loader)."""
    out = {}
    for k, v in state_dict.items():
        for p in ("model.", "resnet."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


register_timm(
    EncoderSpec(
        name="ciga-resnet18",
        family="ciga",
        embed_dim=512,
        input_px=224,
        um_per_px=None,
        precision="fp32",
        license="MIT (repository; the weights carry no separate licence)",
        gated=False,
        hub_id=None,
        arch="resnet18",
        pooling="avgpool(layer4)",
        model_kwargs={"num_classes": 0},
        channels_last=True,
        notes="SimCLR ResNet-18 of Ciga et al. (ozanciga/self-supervised-histopathology), used by "
        "NH2ST: torchvision resnet18 keys, fc removed, global average pool = 512-d. Weights: the "
        "GitHub release file tenpercent/tenpercent_resnet18.ckpt (no hub repo): pass it with "
        "--weights. ImageNet mean/std as NH2ST uses it; the original normalisation is not verified. "
        "Pretrained on 57 datasets of mixed resolutions: no single um/px. fc.* keys ignored.",
    ),
    aliases=("tenpercent", "ciga", "resnet18-ssl-histo"),
    filter_fn=tenpercent_filter,
    ignore_prefixes=("fc.",),
    tiny_kwargs={"layers": [1, 1, 1, 1]},
)
