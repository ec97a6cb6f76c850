"""DeepFool (Moosavi-Dezfooli et al. 2016), L-inf: minimal perturbations, low-confidence adversarials.

Each step linearises the classifier around the iterate and moves to the nearest decision
boundary among a few candidate classes (untargeted) or toward the target class (targeted):
r = (|g| + 1e-4) / ||grad g||_1 * sign(grad g), accumulated and applied with a small overshoot,
inside the eps-ball. Each image stops at its first 8-bit iterate that meets the goal, so
adversarials sit just past the boundary: what early stopping or zero-margin CW would give.
"""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack


class DeepFool(Attack):
    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        with torch.no_grad():
            logits = self.model(x)
        if self.targeted:
            candidates = targets.view(-1, 1)  # (N, 1)
        else:  # the classes closest to the label at the start, as DeepFool's top-k heuristic
            k = min(cfg.candidates, logits.shape[1] - 1)
            candidates = logits.scatter(1, targets.view(-1, 1), float("-inf")).topk(k, dim=1).indices  # (N, k)
        x_adv, r_total = x.clone(), torch.zeros_like(x)
        active = torch.arange(len(x), device=x.device)
        for _ in range(cfg.steps):
            if len(active) == 0:
                break
            xa = x_adv[active].detach().requires_grad_(True)
            z = self.model(xa)
            ta, ca = targets[active], candidates[active]
            if self.targeted:  # g = z_t - (best other class): positive once the target wins
                rival = z.detach().scatter(1, ta.view(-1, 1), float("-inf")).argmax(1)
                gaps = z.gather(1, ta.view(-1, 1)) - z.gather(1, rival.view(-1, 1))  # (n, 1)
            else:  # g_k = z_k - z_y for each candidate k: positive once k beats the label
                gaps = z.gather(1, ca) - z.gather(1, ta.view(-1, 1))  # (n, k)
            grads = torch.stack(
                [torch.autograd.grad(gaps[:, j].sum(), xa, retain_graph=j + 1 < gaps.shape[1])[0] for j in range(gaps.shape[1])],
                1,
            )  # (n, k, C, H, W)
            self.passes[active.cpu()] += gaps.shape[1]
            norms = grads.flatten(2).abs().sum(2) + 1e-12  # (n, k) dual norm of L-inf
            dist = gaps.detach().abs() / norms
            best = dist.argmin(1)
            pick = torch.arange(len(active), device=x.device)
            g = grads[pick, best]  # (n, C, H, W)
            step = (dist[pick, best] + 1e-4 / norms[pick, best]).view(-1, 1, 1, 1) * g.sign()
            r_total[active] += step
            xa = self.project(x[active] + (1 + cfg.overshoot) * r_total[active], x[active])
            done, q = self.reached(xa, x[active], ta, 0.0)
            x_adv[active] = torch.where(done.view(-1, 1, 1, 1), q, xa)
            active = active[~done]
        return x_adv
