"""BIM (Kurakin et al.) and PGD (Madry et al.): iterated signed-gradient steps inside the eps-ball."""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack


class BIM(Attack):
    """x_{i+1} = clip_{x,eps}(x_i + alpha * sign(grad J(x_i))), starting at x_0 = x."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x_adv = self.start(x)
        for _ in range(self.cfg.steps):
            x_adv = self.project(x_adv + self.cfg.step_size * self.loss_gradient_sign(x_adv, targets), x)
        return x_adv


class PGD(BIM):
    """BIM from a uniformly random start inside the eps-ball."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(self.cfg.seed)
        noise = torch.rand(x.shape, generator=g, device=x.device) * 2 - 1
        return self.project(x + self.cfg.eps * noise, x)
