"""Images -> the feature vector a detector head reads: the explanation's descriptor, the peers', or both.

One place builds every detector's features (training rows in ``stages.explain``, ``Scorer`` for the
audit, ``Detector.score`` and the adaptive attack), so a bundle is always scored on the features it
was fitted on, in the order of ``explain.feature_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raydetect import registry
from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.detect.peers import Peer
from raydetect.explain import Explainer, Explanation, describe
from raydetect.models import ImageClassifier

_F32 = torch.finfo(torch.float32)


@dataclass
class Featurized:
    explanation: Explanation | None  # None for a peers-only detector
    features: torch.Tensor  # (N, D) float32
    targets: torch.Tensor  # (N,) the model's predicted (or the given) class
    logits: torch.Tensor  # (N, K)


class Featurizer:
    """The explainer (unless ``features.explanation`` is off) and every peer of ``features.peers``.

    ``references``: clean images, GradientShap's 'train' baseline and the peers' statistics.
    """

    def __init__(
        self, model: ImageClassifier, attribution: AttributionConfig, features: FeatureConfig,
        references: torch.Tensor | None = None, key: bytes | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self.features = features
        self.key = key
        grad_refs = references if attribution.baseline == "train" else None
        self.explainer = Explainer(model, attribution, grad_refs, key) if features.explanation else None
        self.peers: list[Peer] = [registry.PEERS[p].load()(model, features, references) for p in features.peers]
        for peer in self.peers:
            peer.key = key
        self.audit_passes = features.audit_passes(attribution)

    @property
    def attribution(self) -> AttributionConfig | None:
        return self.explainer.cfg if self.explainer else None

    def __call__(
        self, images: torch.Tensor, keys: np.ndarray | None = None, twins: torch.Tensor | None = None,
        create_graph: bool = False, draws: torch.Tensor | None = None,
    ) -> Featurized:  # fmt: skip
        """Features of a batch (N, C, H, W) in [0,1]; ``create_graph`` keeps them functions of the images."""
        x = images.to(self.model.device, torch.float32)
        parts: list[torch.Tensor] = []
        expl = None
        if self.explainer is not None:
            expl = self.explainer(x, keys=keys, twins=twins, create_graph=create_graph, draws=draws)
            parts.append(describe(expl, self.features))
            logits, targets = expl.logits, expl.targets
        else:
            with torch.set_grad_enabled(create_graph):
                logits = self.model(x)
            targets = logits.argmax(1).detach()
        for peer in self.peers:
            f = peer.features(x, create_graph=create_graph)
            parts.append(torch.nan_to_num(f.float(), nan=0.0, posinf=_F32.max, neginf=_F32.min))
        return Featurized(expl, torch.cat(parts, 1), targets, logits if create_graph else logits.detach())
