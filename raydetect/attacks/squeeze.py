"""squeeze_eot: BIM on the classification loss of the image *and* of every view the detector takes.

A detector that compares the image with transformed views of it (the blurred IG baseline, and
any other view) is fooled if every view is adversarial too. This attacker knows the detector's
configuration, not its weights: it optimises the sum of the cross-entropies, with an expectation
over each view's randomness (EOT: ``eot`` draws per step; a view that is not differentiable,
like JPEG, passes gradients straight through).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raydetect.attacks.bim import BIM
from raydetect.config import AttackConfig
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier
from raydetect.models.runtime import seeded_uniform

# A view of a batch: (images (N, C, H, W), draws (N,) in [0, 1) of its random strength) -> (N, C, H, W).
View = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SqueezeEOT(BIM):
    def __init__(self, model: ImageClassifier, cfg: AttackConfig, quantize: bool = True, views: Sequence[View] = ()) -> None:
        super().__init__(model, cfg, quantize)
        if not views:
            raise RaydetectError("squeeze_eot needs the detector's views (its blurred baseline); pass --detector BUNDLE")
        self.views = list(views)
        self.grad_cost = 1 + cfg.eot * len(self.views)
        self._draws = 0  # EOT samples drawn for this batch so far
        self._rows = np.zeros(0, dtype=np.int64)  # the batch rows still attacked (BIM.perturb's active images)

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._draws, self._rows = 0, np.arange(len(x))
        return super().perturb(x, targets)

    def reached(
        self, x_adv: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, above: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        done, q = super().reached(x_adv, x, targets, above)
        self._rows = self._rows[~done.cpu().numpy()]  # BIM.perturb stops these images, as it does here
        return done, q

    def loss_gradient_sign(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(self.model(x), targets, reduction="sum")
        keys = self.keys[self._rows]
        for _ in range(self.cfg.eot):
            self._draws += 1
            # Each image's strengths from its key on a CPU generator: the same on any device, in any batch.
            u = seeded_uniform(keys, self.cfg.seed * 1_000_003 + self._draws, (len(self.views),), x.device)
            for i, view in enumerate(self.views):
                loss = loss + F.cross_entropy(self.model(view(x, u[:, i])), targets, reduction="sum") / self.cfg.eot
        (grad,) = torch.autograd.grad(loss, x)
        return -grad.sign() if self.targeted else grad.sign()
