"""FGSM (Goodfellow et al.) and the paper's "BIM", which its code ran as one FGSM step."""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack


class FGSM(Attack):
    """One signed-gradient step of size eps."""

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self.project(x + self.cfg.eps * self.loss_gradient_sign(x, targets), x)


class PaperBIM(FGSM):
    """What the paper's code ran as "BIM": each iteration restarts from the clean image.

    Every step computes the gradient at x and returns x + eps*sign(grad), so after any number of
    iterations the result is a single eps-sized FGSM step. Kept to replicate the paper's numbers.
    """
