"""The one detector score: images -> explanation -> descriptor -> P(adversarial), in torch.

``Detector.score``, the audit stage and the adaptive attack all call :class:`Scorer`. With
``create_graph=True`` (differentiable explainer and head) the score is a function of the image
that an attacker can differentiate end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.detect.features import Featurizer
from raydetect.detect.heads import Head
from raydetect.explain import Explanation
from raydetect.explain.views import PUBLIC_KEY, keyed_draws, secret, view_specs
from raydetect.models import ImageClassifier
from raydetect.models.runtime import seeded_uniform


@dataclass
class Scored:
    """One batch through the scorer; tensors on the model's device."""

    explanation: Explanation | None  # None for a peers-only detector
    features: torch.Tensor  # (N, D) float32 descriptors, as stored and as the head reads them
    logit: torch.Tensor  # (N,) float64 log-odds of "adversarial"
    targets: torch.Tensor  # (N,) the model's predicted class
    logits: torch.Tensor  # (N, K) the model's logits

    @property
    def score(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)  # (N,) P(adversarial)


class Scorer:
    """A classifier, the features a detector was trained with (explanation and/or peers), and its head."""

    def __init__(
        self, model: ImageClassifier, attribution: AttributionConfig, features: FeatureConfig, head: Head,
        references: torch.Tensor | None = None, key: bytes | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        # references: GradientShap's 'train' baseline and the peers' statistics; key: the auditor's, for the views
        self.featurizer = Featurizer(model, attribution, features, references, key)
        self.explainer = self.featurizer.explainer  # None for a peers-only detector
        self.features = features
        self.head = head.to(model.device)

    def run(
        self,
        images: torch.Tensor,
        keys: np.ndarray | None = None,
        create_graph: bool = False,
        head: Head | None = None,
        draws: torch.Tensor | None = None,
    ) -> Scored:
        """Score a batch (N, C, H, W) in [0,1]; ``head`` swaps in another head (an attacker's surrogate),
        ``draws`` the views' random strengths (an attacker's guess; default: the auditor's keyed draws)."""
        f = self.featurizer(images, keys=keys, create_graph=create_graph, draws=draws)
        return Scored(f.explanation, f.features, (head or self.head).logit(f.features), f.targets, f.logits)

    def __call__(self, images: torch.Tensor, keys: np.ndarray | None = None) -> torch.Tensor:
        """P(adversarial) (N,) float64."""
        return self.run(images, keys).score


class AttackLogit:
    """The detector as a white-box attacker differentiates it (``attacks.adaptive.DetectorLogit``).

    ``head`` replaces a head without gradients (forests, boosters) by a differentiable surrogate
    fitted to the same features (BPDA) for the gradient; ``judge`` and ``threshold`` (the
    detector's flagging threshold) are the detector's own head, which the attacker holds too.
    ``known_key``: the scorer's key for the views' draws when the attacker knows it, i.e. when it is
    the public key (the auditor set no ``RAYDETECT_SECRET``): every draw is then the audit's own,
    computed from the iterate's 8-bit pixels; else each EOT draw is a random guess.
    """

    def __init__(self, scorer: Scorer, threshold: float, head: Head | None = None) -> None:
        self.scorer = scorer
        self.head = (head or scorer.head).to(scorer.model.device)
        if not self.head.differentiable:
            raise ValueError(f"a {self.head.kind} head has no gradient; give a differentiable surrogate")
        t = min(max(threshold, 1e-12), 1 - 1e-12)
        self.threshold_logit = math.log(t / (1 - t))
        self.passes = scorer.featurizer.audit_passes
        key = scorer.featurizer.key or secret()  # what the audit draws with (None: this process's secret)
        self.known_key = key if key == PUBLIC_KEY else None
        acfg = scorer.featurizer.attribution
        self.count = len(view_specs(acfg)) if acfg else 0
        self.random = self.count > 0 and acfg is not None and acfg.jitter > 0 and self.known_key is None

    def _draws(self, x: torch.Tensor, draw: int, keys: np.ndarray) -> torch.Tensor:
        if self.count == 0:
            return torch.zeros(len(x), 0, device=x.device)
        if self.known_key is not None:
            return keyed_draws(x, self.count, self.known_key)  # (N, views): the audit's own
        return seeded_uniform(keys, draw, (self.count,), x.device)  # (N, views): a guess, per image as in any batch

    def __call__(self, x: torch.Tensor, draw: int, keys: np.ndarray | None = None) -> torch.Tensor:
        """(N,) logits with the graph kept; ``keys`` (N,) key each image's guessed draws (default: its position)."""
        keys = np.arange(len(x)) if keys is None else keys
        return self.scorer.run(x, keys, create_graph=True, head=self.head, draws=self._draws(x, draw, keys)).logit

    def judge(self, x: torch.Tensor, draw: int, keys: np.ndarray | None = None) -> torch.Tensor:
        """(N,) logits of the detector itself on ``x`` (no graph, the model's own activations), as the
        attacker estimates them: exact with a known key, else at the guessed draws of ``draw``."""
        keys = np.arange(len(x)) if keys is None else keys
        return self.scorer.run(x, keys, draws=self._draws(x, draw, keys)).logit.detach()
