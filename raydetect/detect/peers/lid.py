"""Local intrinsic dimensionality (Ma et al., ICLR 2018) of each layer's activations.

LID(x) = -(1/k sum_i log(d_i / d_k))^-1 over the distances d_1 <= ... <= d_k from x's activations
to its k nearest clean references (the paper's minibatch of clean images; here a fixed sample the
bundle keeps). A reference never counts as its own neighbour (distance 0 is skipped). One value per
layer; a logistic regression on the vector is the detector.
"""

from __future__ import annotations

import torch

from raydetect.config import FeatureConfig
from raydetect.detect.peers import Peer, layer_outputs, reference_batches
from raydetect.models import ImageClassifier

TINY = 1e-12


def lid(acts: torch.Tensor, refs: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) activations, (R, D) references -> (N,) maximum-likelihood LID with k neighbours (float64)."""
    a, r = acts.double(), refs.double()
    d2 = (a * a).sum(1, keepdim=True) + (r * r).sum(1)[None] - 2 * a @ r.T  # (N, R) squared distances
    scale = (a * a).sum(1, keepdim=True) + (r * r).sum(1)[None]
    d2 = torch.where(d2 <= 1e-10 * scale, torch.full_like(d2, float("inf")), d2)  # itself: not a neighbour
    near = d2.topk(k, dim=1, largest=False).values.clamp_min(TINY)  # ascending
    logs = 0.5 * (near.log() - near[:, -1:].log())  # log(d_i / d_k)
    return 1.0 / (-logs.mean(1) + TINY)


class LID(Peer):
    def __init__(self, model: ImageClassifier, cfg: FeatureConfig, references: torch.Tensor | None = None) -> None:
        super().__init__(model, cfg, references)
        parts: list[list[torch.Tensor]] = [[] for _ in cfg.peer_layers]
        with torch.no_grad():
            for batch in reference_batches(model, references, "LID", cfg.lid_k + 1):
                for i, out in enumerate(layer_outputs(model, batch, cfg.peer_layers)):
                    parts[i].append(out.flatten(1).float())
        self.refs = [torch.cat(p) for p in parts]  # per layer (R, D)

    def features(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        with torch.set_grad_enabled(create_graph):
            outs = layer_outputs(self.model, x, self.cfg.peer_layers)
            return torch.stack([lid(o.flatten(1), r, self.cfg.lid_k) for o, r in zip(outs, self.refs, strict=True)], 1)
