"""GenBio-PathFM (GenBio AI): a ViT-G/16 that encodes each RGB channel as its own 1-channel image.

The architecture (DINOv3-style: RoPE, 4 storage tokens, SwiGLU, LayerScale, no qkv bias; 40 blocks x 1536,
24 heads, ``in_chans=1``) is not in timm. stfeat builds it from the authors' optional package
(``pip install git+https://github.com/genbio-ai/genbio-pathfm``, module ``genbio_pathfm.model``, the
README's "Option 2"), with the constructor kwargs of its ``GenBio_PathFM_Inference``; the weights file
``model.pth`` (a pickle) is read with ``torch.load(weights_only=True)`` and loaded with strict keys.
The README's "Option 1", ``transformers.AutoModel.from_pretrained(..., trust_remote_code=True)``, runs
code from the hub repo and is not used here.

The embedding is the concatenation of the three normed CLS tokens (R, G, B) = 3 x 1536 = 4608, as the
package's ``forward``. Facts: ../shared/ENCODERS.md, "Seven more encoders".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stfeat.encoders._hub import require
from stfeat.encoders._timm import weights_path_for
from stfeat.encoders._weights import load_strict, read_state_dict
from stfeat.encoders.base import EncoderSpec, register_encoder

GENBIO_PIP = "git+https://github.com/genbio-ai/genbio-pathfm"
GENBIO_MEAN = (0.697, 0.575, 0.728)
GENBIO_STD = (0.188, 0.240, 0.187)
# The kwargs GenBio_PathFM_Inference passes to genbio_pathfm.model.VisionTransformer.
_VIT_KW: dict[str, Any] = {
    "img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_ratio": 4,
    "in_chans": 1, "n_storage_tokens": 4, "ffn_layer": "swiglu64", "layerscale_init": 1.0e-5,
    "qkv_bias": False, "proj_bias": True, "ffn_bias": True, "pos_embed_rope_rescale_coords": 2,
    "pos_embed_rope_jitter_coords": True, "pos_embed_rope_normalize_coords": "separate",
}
# Tiny builds: same blocks, one of them, width 48 (RoPE needs embed_dim % (4 * heads) == 0).
_TINY_KW: dict[str, Any] = {"embed_dim": 48, "depth": 1, "num_heads": 2}


def _init_random(vit: Any) -> None:
    """Initialise a weightless build (the package allocates parameters with ``torch.empty``)."""
    import torch.nn as nn

    for m in vit.modules():
        if m is not vit and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    nn.init.normal_(vit.cls_token, std=0.02)
    if getattr(vit, "n_storage_tokens", 0) > 0:
        nn.init.normal_(vit.storage_tokens, std=0.02)


def _rgb_module(vit: Any) -> Any:
    import torch.nn as nn

    class GenBioRGB(nn.Module):
        """(B, 3, H, W) -> each channel as a (B*3, 1, H, W) batch -> concat of the 3 normed CLS tokens."""

        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.model = m

        def forward(self, x):
            b, c, h, w = x.shape
            cls = self.model.forward_features(x.reshape(b * c, 1, h, w))["x_norm_clstoken"]
            return cls.reshape(b, -1)  # [R | G | B], as the package's torch.cat of cls[:, 0..2]

    return GenBioRGB(vit)


@register_encoder(
    EncoderSpec(
        name="genbio-pathfm",
        family="genbio",
        embed_dim=4608,
        input_px=224,
        um_per_px=0.5,
        mean=GENBIO_MEAN,
        std=GENBIO_STD,
        precision="bf16",
        license="GenBio AI Community (non-commercial)",
        gated=False,
        hub_id="genbio-ai/genbio-pathfm",
        arch="genbio_pathfm.model.VisionTransformer",
        pooling="concat(cls of R, G, B channel)",
        needs=("genbio_pathfm",),
        model_kwargs=dict(_VIT_KW),
        notes="GenBio-PathFM (JEDI: JEPA + DINO, public data only), 1.1B: custom ViT-G/16, 40 blocks x 1536, "
        "24 heads, RoPE, 4 storage tokens, SwiGLU (swiglu64), LayerScale 1e-5, no qkv bias, in_chans=1. "
        "Each RGB channel is encoded separately; embedding = concat of the three normed CLS tokens (4608). "
        "Needs the optional genbio_pathfm package. Weights: model.pth (a pickle, read with "
        "torch.load(weights_only=True), strict keys). Resize to 224 (official Resize((224,224)); TRIDENT "
        "bilinear, no crop); bf16 as TRIDENT (the official code states no precision). Gated: not verified "
        "(lazyslide-models lists it as not gated). Training resolution not verified (TRIDENT runs it at "
        "20x); 0.5 um/px listed. The hub's AutoModel route (trust_remote_code=True) is not used.",
    ),
    aliases=("genbio", "genbio_pathfm", "genbiopathfm", "genbio-pathfm-vitg16"),
)
def _genbio_pathfm(spec: EncoderSpec, weights: Path | None, *, pretrained: bool = True, tiny: bool = False,
                   **kwargs: Any) -> tuple[Any, Path | None]:
    if kwargs:
        raise TypeError(f"{spec.name} takes no constructor overrides, got {sorted(kwargs)}")
    require("genbio_pathfm", GENBIO_PIP, why="the genbio-pathfm encoder")
    gmodel = require("genbio_pathfm.model", GENBIO_PIP, why="the genbio-pathfm encoder")
    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny, hub_files=("model.pth",))
    kw = dict(spec.model_kwargs)
    if tiny:
        kw.update(_TINY_KW)
    vit = gmodel.VisionTransformer(**kw)
    if path is None:
        _init_random(vit)
    else:
        load_strict(vit, read_state_dict(path), path, what=spec.name)
    return _rgb_module(vit), path
