"""IG baselines built from the image itself (black, blur, noise), from clean references
(GradientShap's ``train``), or from the image's twin (the paper's leaky ``pair`` protocol).

Every baseline is a torch function of the input, so gradients flow through it (a blurred
baseline moves when the image moves: the adaptive attack must see that).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from raydetect.config import AttributionConfig
from raydetect.errors import RaydetectError
from raydetect.explain.views import gaussian_blur, view_fn, view_specs
from raydetect.models.runtime import seeded_uniform


def noise_like(x: torch.Tensor, seed: int, keys: np.ndarray) -> torch.Tensor:
    """Uniform [0,1] noise images, one fixed draw per key, so neither batching nor the device changes the result."""
    return seeded_uniform(keys, seed, tuple(x.shape[1:]), x.device).to(x.dtype)


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
    "blur": lambda x, cfg, keys, twins, refs: gaussian_blur(x, cfg.blur_sigma),  # jittered: see explainers
    "noise": lambda x, cfg, keys, twins, refs: noise_like(x, cfg.seed, keys),
    "train": lambda x, cfg, keys, twins, refs: _references(x, refs),
    "pair": lambda x, cfg, keys, twins, refs: _twin(x, twins),
}


def baselines(
    x: torch.Tensor, cfg: AttributionConfig, keys: np.ndarray, twins: torch.Tensor | None = None, refs: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image baselines (N, C, H, W), or the reference distribution (R, C, H, W) for 'train'."""
    return BASELINES[cfg.baseline](x, cfg, keys, twins, refs)


# A view the detector takes of an image: (images (N, C, H, W), draws (N,) in [0, 1) of its random strength,
# e.g. an attacker's EOT sample) -> (N, C, H, W).
View = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def views(cfg: AttributionConfig) -> list[View]:
    """The image transformations a detector with this configuration computes and classifies.

    Its IG baseline is one when it is a function of the image (blur), and so is every extra view;
    a constant or random baseline (black, noise) is no view of the image. An attacker who knows
    the configuration (squeeze_eot) makes every view adversarial too, averaging over the views'
    random strength when the detector draws it per image.
    """
    return [view_fn(spec, cfg.jitter) for spec in view_specs(cfg)]
