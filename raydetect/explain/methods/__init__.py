"""Attribution methods, one file each; ``raydetect.registry.EXPLAINERS`` names them and says what each
costs and supports. Each is a function ``(Call) -> (attributions, delta | None)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raydetect.config import AttributionConfig
from raydetect.models import ImageClassifier


@dataclass(frozen=True)
class Call:
    """One explanation request, as every method receives it."""

    model: ImageClassifier
    x: torch.Tensor  # (N, C, H, W)
    base: torch.Tensor  # (N, C, H, W), or (R, C, H, W) references for 'train'
    targets: torch.Tensor  # (N,)
    cfg: AttributionConfig
    keys: np.ndarray  # (N,) per-image seeds
    chunk: int
    create_graph: bool


Attribution = tuple[torch.Tensor, torch.Tensor | None]
