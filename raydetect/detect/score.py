"""The one detector score: images -> explanation -> descriptor -> P(adversarial), in torch.

``Detector.score``, the audit stage and the adaptive attack all call :class:`Scorer`. With
``create_graph=True`` (differentiable explainer and head) the score is a function of the image
that an attacker can differentiate end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.detect.heads import Head
from raydetect.explain import Explainer, Explanation, describe
from raydetect.models import ImageClassifier


@dataclass
class Scored:
    """One batch through the scorer; tensors on the model's device."""

    explanation: Explanation
    features: torch.Tensor  # (N, D) float32 descriptors, as stored and as the head reads them
    logit: torch.Tensor  # (N,) float64 log-odds of "adversarial"

    @property
    def score(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)  # (N,) P(adversarial)


class Scorer:
    """A classifier, the explainer and descriptor a detector was trained with, and its head."""

    def __init__(
        self, model: ImageClassifier, attribution: AttributionConfig, features: FeatureConfig, head: Head,
        references: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self.explainer = Explainer(model, attribution, references)  # references: GradientShap's 'train' baseline
        self.features = features
        self.head = head.to(model.device)

    def run(
        self, images: torch.Tensor, keys: np.ndarray | None = None, create_graph: bool = False, head: Head | None = None
    ) -> Scored:
        """Score a batch (N, C, H, W) in [0,1]; ``head`` swaps in another head (an attacker's surrogate)."""
        expl = self.explainer(images, keys=keys, create_graph=create_graph)
        feats = describe(expl, self.features)
        return Scored(expl, feats, (head or self.head).logit(feats))

    def __call__(self, images: torch.Tensor, keys: np.ndarray | None = None) -> torch.Tensor:
        """P(adversarial) (N,) float64."""
        return self.run(images, keys).score
