"""CW-L2 (Carlini & Wagner 2017) inside the eps-ball: the smallest L2 perturbation that fools the model.

Minimises ||delta||_2^2 + c * max(-margin(x + delta), -kappa) with Adam, delta kept in the L-inf
ball of radius eps and the image in [0, 1]; ``lam`` is c, ``stop_margin`` is kappa (default 0: just
past the boundary), ``alpha`` Adam's step (default eps/10). Each image keeps the 8-bit copy of
lowest L2 that fools the model (rounded to the nearest level, else away from the clean image, so a
sub-level perturbation is not lost). With ``lam_search`` > 0, c is halved for images that succeeded
and multiplied by 10 for those that did not, and the optimisation runs again from the clean image.
"""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack, margin


class CWL2(Attack):
    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        kappa = 0.0 if cfg.stop_margin is None else cfg.stop_margin
        lr = cfg.alpha if cfg.alpha is not None else cfg.eps / 10
        c = torch.full((len(x),), float(cfg.lam), device=x.device)
        best, best_l2 = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        for _ in range(cfg.lam_search + 1):
            delta = torch.zeros_like(x, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=lr)
            found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            for _ in range(cfg.steps):
                xa = x + delta
                m = margin(self.model(xa), targets, self.targeted)
                loss = (delta.flatten(1).pow(2).sum(1) + c * torch.clamp(-m, min=-kappa)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.passes += 1
                with torch.no_grad():
                    delta.copy_(self.project(x + delta, x) - x)
                    done, q = self.judge_8bit(x + delta, x, targets, kappa)
                    l2 = (q - x).flatten(1).norm(dim=1)
                    better = done & (l2 < best_l2)
                    best[better], best_l2[better] = q[better], l2[better]
                    found |= done
            c = torch.where(found, c / 2, c * 10)
        return best
