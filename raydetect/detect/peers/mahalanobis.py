"""Mahalanobis distance to the clean images' Gaussian (Lee et al., NeurIPS 2018), class-agnostic.

Lee et al. fit one Gaussian per class with a shared covariance to each layer's channel means, move
the input a small step (``maha_noise``) towards higher confidence, and feed each layer's confidence
-(f - mu)' S^-1 (f - mu) to a logistic regression. Their class means need many images per class;
the references here are a few clean images over many classes (the shared ImageNet sample has one
per class), so this is the **class-agnostic** variant: one Gaussian over all clean references, with
Ledoit-Wolf shrinkage of its covariance (fewer references than channels). Tables label it so.
"""

from __future__ import annotations

import numpy as np
import torch

from raydetect.config import FeatureConfig
from raydetect.detect.peers import Peer, layer_outputs, reference_batches
from raydetect.models import ImageClassifier

MIN_REFERENCES = 10


def pooled(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as one vector per image: channel means of maps, logits as they are."""
    return out.mean((2, 3)) if out.ndim == 4 else out.flatten(1)


class Mahalanobis(Peer):
    def __init__(self, model: ImageClassifier, cfg: FeatureConfig, references: torch.Tensor | None = None) -> None:
        from sklearn.covariance import LedoitWolf

        super().__init__(model, cfg, references)
        parts: list[list[np.ndarray]] = [[] for _ in cfg.peer_layers]
        with torch.no_grad():
            for batch in reference_batches(model, references, "Mahalanobis", MIN_REFERENCES):
                for i, out in enumerate(layer_outputs(model, batch, cfg.peer_layers)):
                    parts[i].append(pooled(out).double().cpu().numpy())
        self.mean, self.precision = [], []
        for p in parts:
            lw = LedoitWolf().fit(np.concatenate(p))
            self.mean.append(torch.from_numpy(lw.location_).to(model.device))
            self.precision.append(torch.from_numpy(lw.precision_).to(model.device))

    def _distance(self, out: torch.Tensor, i: int) -> torch.Tensor:
        z = pooled(out).double() - self.mean[i]
        return ((z @ self.precision[i]) * z).sum(1)  # (N,)

    def features(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        layers = self.cfg.peer_layers
        cols = []
        for i, layer in enumerate(layers):
            step = torch.zeros_like(x)
            if self.cfg.maha_noise > 0:  # the input pre-processing: one signed step that lowers this layer's distance
                with torch.enable_grad():
                    xr = x.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self._distance(layer_outputs(self.model, xr, [layer])[0], i).sum(), xr)
                step = self.cfg.maha_noise * grad.sign()
            with torch.set_grad_enabled(create_graph):
                moved = (x - step).clamp(0, 1)  # the step is a constant to an attacker (as in Lee et al.'s code)
                cols.append(-self._distance(layer_outputs(self.model, moved, [layer])[0], i))
        return torch.stack(cols, 1)
