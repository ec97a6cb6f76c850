"""IG baselines built from the image itself (black, blur, noise), from clean references
(GradientShap's ``train``), or from the image's twin (the paper's leaky ``pair`` protocol).

Every baseline is a torch function of the input, so gradients flow through it (a blurred
baseline moves when the image moves: the adaptive attack must see that).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raydetect.config import AttributionConfig
from raydetect.errors import RaydetectError


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; the kernel never exceeds the image."""
    radius = max(1, min(int(math.ceil(3 * sigma)), (min(x.shape[-2:]) - 1) // 2))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    h = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(h, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def noise_like(x: torch.Tensor, seed: int, keys: np.ndarray) -> torch.Tensor:
    """Uniform [0,1] noise images, one fixed draw per key, so batching does not change the result."""
    out = torch.empty_like(x)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(key))
        out[i] = torch.rand(x.shape[1:], generator=g).to(x.device, x.dtype)
    return out


# (images (N, C, H, W), config, per-image keys (N,), twins or None, references or None) -> baselines
BaselineFn = Callable[[torch.Tensor, AttributionConfig, np.ndarray, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]


def _twin(x: torch.Tensor, twins: torch.Tensor | None) -> torch.Tensor:
    if twins is None:
        raise RaydetectError("baseline 'pair' (paper protocol) needs each image's twin")
    return twins.to(x.device, x.dtype)


def _references(x: torch.Tensor, refs: torch.Tensor | None) -> torch.Tensor:
    if refs is None or len(refs) == 0:
        raise RaydetectError("baseline 'train' needs reference clean images")
    return refs.to(x.device, x.dtype)  # (R, C, H, W): a distribution, not one per image


BASELINES: dict[str, BaselineFn] = {
    "black": lambda x, cfg, keys, twins, refs: torch.zeros_like(x),
    "blur": lambda x, cfg, keys, twins, refs: gaussian_blur(x, cfg.blur_sigma),
    "noise": lambda x, cfg, keys, twins, refs: noise_like(x, cfg.seed, keys),
    "train": lambda x, cfg, keys, twins, refs: _references(x, refs),
    "pair": lambda x, cfg, keys, twins, refs: _twin(x, twins),
}


def baselines(
    x: torch.Tensor, cfg: AttributionConfig, keys: np.ndarray, twins: torch.Tensor | None = None, refs: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image baselines (N, C, H, W), or the reference distribution (R, C, H, W) for 'train'."""
    return BASELINES[cfg.baseline](x, cfg, keys, twins, refs)
