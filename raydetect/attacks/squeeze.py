"""squeeze_eot: BIM on the classification loss of the image *and* of every view the detector takes.

A detector that compares the image with transformed views of it (the blurred IG baseline, and
any other view) is fooled if every view is adversarial too. This attacker knows the detector's
configuration, not its weights: it optimises the sum of the cross-entropies, with an expectation
over each view's randomness (EOT: ``eot`` draws per step; a view that is not differentiable,
like JPEG, passes gradients straight through).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from raydetect.attacks.bim import BIM
from raydetect.config import AttackConfig
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier

# A view of a batch (N, C, H, W) -> (N, C, H, W); the generator draws its random parameters.
View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class SqueezeEOT(BIM):
    def __init__(self, model: ImageClassifier, cfg: AttackConfig, quantize: bool = True, views: Sequence[View] = ()) -> None:
        super().__init__(model, cfg, quantize)
        if not views:
            raise RaydetectError("squeeze_eot needs the detector's views (its blurred baseline); pass --detector BUNDLE")
        self.views = list(views)
        self.grad_cost = 1 + cfg.eot * len(self.views)
        self._draws = 0

    def loss_gradient_sign(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(self.model(x), targets, reduction="sum")
        for _ in range(self.cfg.eot):
            self._draws += 1
            g = torch.Generator(device=x.device).manual_seed(self.cfg.seed * 1_000_003 + self._draws)
            for view in self.views:
                loss = loss + F.cross_entropy(self.model(view(x, g)), targets, reduction="sum") / self.cfg.eot
        (grad,) = torch.autograd.grad(loss, x)
        return -grad.sign() if self.targeted else grad.sign()
