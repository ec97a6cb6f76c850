"""BIM (Kurakin et al.) and PGD (Madry et al.): iterated signed-gradient steps inside the eps-ball.

With ``stop_margin`` each image stops at the first iterate whose 8-bit image meets the goal by
that logit margin: 0 gives minimal, low-confidence adversarials (early stopping), larger values
adversarials of a chosen confidence (kappa).
"""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack


class BIM(Attack):
    """x_{i+1} = clip_{x,eps}(x_i + alpha * sign(grad J(x_i))), starting at x_0 = x."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x_adv = self.start(x)
        active = torch.arange(len(x), device=x.device)  # images still being attacked
        for _ in range(cfg.steps):
            if len(active) == 0:
                break
            xa, xc, ta = x_adv[active], x[active], targets[active]
            xa = self.project(xa + cfg.step_size * self.loss_gradient_sign(xa, ta), xc)
            self.passes[active.cpu()] += self.grad_cost
            if cfg.stop_margin is None:
                x_adv[active] = xa
                continue
            done, q = self.reached(xa, xc, ta, cfg.stop_margin)
            x_adv[active] = torch.where(done.view(-1, 1, 1, 1), q, xa)  # a stopped image keeps its 8-bit form
            active = active[~done]
        return x_adv


class PGD(BIM):
    """BIM from a uniformly random start inside the eps-ball."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return self.random_start(x)
