"""DeepFool (Moosavi-Dezfooli et al. 2016), L-inf: minimal perturbations, low-confidence adversarials.

Each step linearises the classifier around the iterate and moves to the nearest decision
boundary among a few candidate classes (untargeted) or toward the target class (targeted):
r = (|g| + 1e-4) / ||grad g||_1 * sign(grad g), accumulated and applied with a small overshoot,
inside the eps-ball. Each image stops at its first 8-bit iterate that meets the goal, so
adversarials sit just past the boundary: what early stopping or zero-margin CW would give.

An auditor receives 8-bit images, so the attack keeps going until the *8-bit copy* fools the model:
once the float iterate has crossed but its nearest-level rounding has not (a perturbation below
half a grey level rounds to nothing), it tries rounding away from the clean image, then grows the
accumulated perturbation by ``GROWTH`` per step (forward passes only) instead of linearising again
at a point that is already across.
"""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack, margin

GROWTH = 1.25  # scale of the accumulated perturbation per step once the float iterate has crossed


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
        scale = torch.ones(len(x), device=x.device)  # grows once an image's float iterate has crossed
        crossed = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        active = torch.arange(len(x), device=x.device)
        for _ in range(cfg.steps):
            if len(active) == 0:
                break
            step_rows = active[~crossed[active]]  # images still on the clean side: one DeepFool step each
            if len(step_rows):
                r_total[step_rows] += self._step(step_rows, x_adv[step_rows], targets[step_rows], candidates[step_rows])
            scale[active[crossed[active]]] *= GROWTH
            xc, ta = x[active], targets[active]
            xa = self.project(xc + (1 + cfg.overshoot) * scale[active].view(-1, 1, 1, 1) * r_total[active], xc)
            with torch.no_grad():
                crossed[active] = margin(self.model(xa), ta, self.targeted) > 0
            done, q = self.judge_8bit(xa, xc, ta)
            x_adv[active] = torch.where(done.view(-1, 1, 1, 1), q, xa)
            active = active[~done]
        return x_adv

    def _step(self, rows: torch.Tensor, xa: torch.Tensor, ta: torch.Tensor, ca: torch.Tensor) -> torch.Tensor:
        """One linearised step toward the nearest boundary among the candidates, for each image."""
        xa = xa.detach().requires_grad_(True)
        z = self.model(xa)
        if self.targeted:  # g = z_t - (best other class): positive once the target wins
            rival = z.detach().scatter(1, ta.view(-1, 1), float("-inf")).argmax(1)
            gaps = z.gather(1, ta.view(-1, 1)) - z.gather(1, rival.view(-1, 1))  # (n, 1)
        else:  # g_k = z_k - z_y for each candidate k: positive once k beats the label
            gaps = z.gather(1, ca) - z.gather(1, ta.view(-1, 1))  # (n, k)
        grads = torch.stack(
            [torch.autograd.grad(gaps[:, j].sum(), xa, retain_graph=j + 1 < gaps.shape[1])[0] for j in range(gaps.shape[1])],
            1,
        )  # (n, k, C, H, W)
        self.passes[rows.cpu()] += gaps.shape[1]
        norms = grads.flatten(2).abs().sum(2) + 1e-12  # (n, k) dual norm of L-inf
        dist = gaps.detach().abs() / norms
        best = dist.argmin(1)
        pick = torch.arange(len(xa), device=xa.device)
        g = grads[pick, best]  # (n, C, H, W)
        return (dist[pick, best] + 1e-4 / norms[pick, best]).view(-1, 1, 1, 1) * g.sign()
