"""ImageNet baselines: HEST's truncated ResNet-50, DenseNet-121 (ST-Net, mclSTExp), EfficientNet-Lite0."""

from __future__ import annotations

from typing import Any

from stfeat.encoders._timm import register_timm
from stfeat.encoders.base import HALF_MEAN, HALF_STD, EncoderSpec


def _truncate_resnet(model: Any) -> Any:
    """conv1 ... layer3, then global average pooling (HEST/UNI ``resnet50_trunc``: 1024-d)."""
    import torch.nn as nn

    class ResNetTrunc(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
            self.layers = nn.Sequential(m.layer1, m.layer2, m.layer3)

        def forward(self, x):
            return self.layers(self.stem(x)).mean(dim=(2, 3))

    return ResNetTrunc(model)


register_timm(
    EncoderSpec(
        name="resnet50-trunc",
        family="imagenet",
        embed_dim=1024,
        input_px=224,
        um_per_px=None,
        precision="fp32",
        license="BSD-3-Clause",
        hub_id="timm/resnet50.tv_in1k",
        arch="resnet50",
        pooling="avgpool(layer3)",
        model_kwargs={"num_classes": 0},
        channels_last=True,
        notes="HEST-Benchmark baseline: torchvision ImageNet-1k ResNet-50 cut after layer3 (stride 16), "
        "global average pooled; HEST feeds 224 px at 0.5 um/px. layer4/fc weights in a full checkpoint "
        "are ignored.",
    ),
    aliases=("resnet50", "resnet50_trunc"),
    wrap=_truncate_resnet,
    ignore_prefixes=("fc.", "layer4."),
    tiny_kwargs={"layers": [1, 1, 1, 1]},
)

register_timm(
    EncoderSpec(
        name="densenet121",
        family="imagenet",
        embed_dim=1024,
        input_px=224,
        um_per_px=None,
        precision="fp32",
        license="BSD-3-Clause",
        hub_id="timm/densenet121.tv_in1k",
        arch="densenet121",
        pooling="relu+avgpool(features)",
        model_kwargs={"num_classes": 0},
        channels_last=True,
        notes="ST-Net / mclSTExp image encoder: DenseNet-121 features, final BN+ReLU, global average "
        "pool (classifier removed, classifier.* keys ignored). Also loads the Keras-converted "
        "densenet121.in1k_keras.safetensors (MIT).",
    ),
    aliases=("densenet-121", "densenet"),
    ignore_prefixes=("classifier.",),
    tiny_kwargs={"growth_rate": 8, "block_config": (1, 1, 1, 1)},
)

register_timm(
    EncoderSpec(
        name="efficientnet-lite0",
        family="imagenet",
        embed_dim=1280,
        input_px=224,
        um_per_px=None,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp32",
        license="Apache-2.0",
        hub_id="timm/tf_efficientnet_lite0.in1k",
        arch="tf_efficientnet_lite0",
        pooling="avgpool(conv_head)",
        model_kwargs={"num_classes": 0},
        channels_last=True,
        notes="Small ImageNet CNN (4.7M params), mean = std = 0.5; classifier.* keys ignored.",
    ),
    aliases=("tf_efficientnet_lite0", "efficientnet_lite0"),
    ignore_prefixes=("classifier.",),
    tiny_kwargs={},
)
