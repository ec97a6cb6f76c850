"""Stability under random noise (Hu et al., NeurIPS 2019; Roth et al., ICML 2019): the near-boundary signal.

A minimal adversarial sits just across the decision boundary: small random noise moves its logits
back towards the class it came from far more often than it moves a clean image, whose prediction
sits deep inside its class. Per image, ``noise_draws`` Gaussian perturbations of standard deviation
``noise_sigma`` (drawn from the image's 8-bit pixels and the auditor's key, like the views' strengths,
so an attacker without the key cannot precompute them) give five numbers: the logit margin of the
predicted class at the image, its mean and spread under noise, the predicted class's mean probability
under noise and the mean L1 change of the softmax. Hard label flips are left out on purpose: their
gradient is zero, and a detector that hides its gradient only looks robust to the adaptive attack.
"""

from __future__ import annotations

import torch

from raydetect.detect.peers import Peer
from raydetect.explain.views import keyed_draws
from raydetect.models.runtime import keyed_generator

_NOISE_SEED = 7  # the noise's own stream: its draws are not the views'


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_target - max of the other logits, per row."""
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return z_t - others.max(1).values


class NoiseStability(Peer):
    """Features in the order ``registry.PEERS["noise"].names`` lists them."""

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """(draws, N, C, H, W) Gaussian noise, each image's from a CPU generator seeded by its keyed draw."""
        k, sigma = self.cfg.noise_draws, self.cfg.noise_sigma
        seeds = (keyed_draws(x, 1, self.key)[:, 0].double().cpu() * 2**53).long().tolist()
        out = torch.empty((k, *x.shape))
        for i, s in enumerate(seeds):
            out[:, i] = torch.randn((k, *x.shape[1:]), generator=keyed_generator(_NOISE_SEED, s))
        return (out * sigma).to(x.device, x.dtype)

    def features(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        noise = self.noise(x)
        with torch.set_grad_enabled(create_graph):
            logits = self.model(x).double()
            target = logits.argmax(1).detach()
            p = logits.softmax(1)
            margins, probs, l1 = [], [], []
            for d in noise:
                z = self.model((x + d).clamp(0, 1)).double()
                q = z.softmax(1)
                margins.append(margin(z, target))
                probs.append(q.gather(1, target[:, None]).squeeze(1))
                l1.append((q - p).abs().sum(1))
            m = torch.stack(margins)  # (draws, N)
            return torch.stack(
                [margin(logits, target), m.mean(0), m.std(0, unbiased=False), torch.stack(probs).mean(0),
                 torch.stack(l1).mean(0)], 1
            )  # fmt: skip
