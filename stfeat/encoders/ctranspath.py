"""CTransPath: Swin-T with a convolutional stem (TransPath / CHIEF), 768-d global average pool.

Built on modern timm's ``swin_tiny_patch4_window7_224`` with stfeat's ``ConvStem`` (the authors used
a patched timm 0.5.4); timm's swin ``checkpoint_filter_fn`` maps the original checkpoint layout
(downsample at the end of a stage) to timm's (at the start) and drops the non-persistent buffers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stfeat.encoders._timm import weights_path_for
from stfeat.encoders._weights import load_strict, read_state_dict
from stfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register_encoder


def _conv_stem_cls() -> Any:
    import torch.nn as nn

    class ConvStem(nn.Module):
        """Two 3x3 stride-2 conv+BN+ReLU, then a 1x1 conv to the Swin width (stride 4 overall).

        Parameter names (``proj.0/1/3/4/6``, ``norm``) match the CTransPath checkpoint.
        """

        def __init__(self, img_size: Any = 224, patch_size: Any = 4, in_chans: int = 3, embed_dim: int = 96,
                     norm_layer: Any = None, output_fmt: str = "NHWC", strict_img_size: bool = True,
                     device: Any = None, dtype: Any = None, **_: Any) -> None:
            super().__init__()
            ps = patch_size if isinstance(patch_size, int) else patch_size[0]
            if ps != 4 or embed_dim % 8:
                raise ValueError("ConvStem needs patch_size 4 and embed_dim divisible by 8")
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.img_size = size
            self.patch_size = (4, 4)
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.output_fmt = output_fmt
            dd = {"device": device, "dtype": dtype}
            layers: list[nn.Module] = []
            cin, cout = in_chans, embed_dim // 8
            for _i in range(2):
                layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False, **dd),
                           nn.BatchNorm2d(cout, **dd), nn.ReLU(inplace=True)]
                cin, cout = cout, cout * 2
            layers.append(nn.Conv2d(cin, embed_dim, 1, **dd))
            self.proj = nn.Sequential(*layers)
            self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

        def forward(self, x):
            x = self.proj(x)  # (B, C, H/4, W/4)
            x = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x.flatten(2).transpose(1, 2)
            return self.norm(x)

    return ConvStem


@register_encoder(
    EncoderSpec(
        name="ctranspath",
        family="ctranspath",
        embed_dim=768,
        input_px=224,
        um_per_px=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp32",
        license="GPL-3.0",
        gated=True,
        hub_id="MahmoodLab/hest-bench",
        arch="swin_tiny_patch4_window7_224",
        pooling="avgpool",
        model_kwargs={"img_size": 224, "num_classes": 0, "embed_layer": "ConvStem"},
        notes="Swin-T + ConvStem (27.5M). Hub route: the CHIEF-retrained weights TRIDENT uses "
        "(dataset MahmoodLab/hest-bench, fm_v1/ctranspath/CHIEF_CTransPath.pth, access-gated); the "
        "original TransPath ctranspath.pth loads the same way via --weights. head.* keys are ignored.",
    ),
    aliases=("ctrans", "transpath", "chief-ctranspath"),
)
def _ctranspath(spec: EncoderSpec, weights: Path | None, *, pretrained: bool = True, tiny: bool = False,
                **kwargs: Any) -> tuple[Any, Path | None]:
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    path = weights_path_for(spec, weights, pretrained=pretrained, tiny=tiny,
                            hub_files=("fm_v1/ctranspath/CHIEF_CTransPath.pth",), repo_type="dataset")
    kw: dict[str, Any] = {"img_size": 224, "num_classes": 0, "embed_layer": _conv_stem_cls()}
    if tiny:
        kw.update(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
    kw.update(kwargs)
    model = timm.create_model(spec.arch, pretrained=False, **kw)
    if path is not None:
        load_strict(model, read_state_dict(path), path, what=spec.name, filter_fn=checkpoint_filter_fn,
                    ignore_prefixes=("head.",))
    return model, path
