"""Square Attack (Andriushchenko et al. 2020), L-inf: uses only the model's outputs (scores), no gradients.

Starts from vertical stripes of +-eps; each query changes one random square window of each image
to a random +-eps per channel and keeps the change when the margin loss drops. The window's side
shrinks on the paper's schedule. Each image stops at its first 8-bit iterate that fools the model,
so the result is a query-only, near-boundary adversarial. ``steps`` is the query budget; every
query is counted as one pass (a forward pass is cheaper than a gradient pass: the count is an upper
bound of its cost). Random draws come from one CPU generator per image key.
"""

from __future__ import annotations

import numpy as np
import torch

from raydetect.attacks.base import Attack, margin
from raydetect.models.runtime import keyed_generator

P_INIT = 0.05  # share of the image's pixels the first windows cover (the paper's ImageNet setting)


def window_share(step: int, budget: int) -> float:
    """The paper's schedule of the window's share of the image, rescaled to a budget of 10,000 queries."""
    i = int(step / budget * 10_000)
    for k, edge in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if i <= edge:
            return P_INIT / 2**k
    return P_INIT / 2**9


class Square(Attack):
    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg, (n, ch, h, w) = self.cfg, x.shape
        gens = [keyed_generator(cfg.seed, k) for k in self.keys]
        stripes = torch.stack([torch.randint(0, 2, (1, ch, 1, w), generator=g).float() * 2 - 1 for g in gens]).squeeze(1)
        x_adv = self.project(x + cfg.eps * stripes.to(x.device).expand(n, ch, h, w), x)
        with torch.no_grad():
            loss = -margin(self.model(x_adv), targets, self.targeted)
        self.passes += 1
        done, q = self.judge_8bit(x_adv, x, targets, 0.0)
        x_adv = torch.where(done.view(-1, 1, 1, 1), q, x_adv)
        active = torch.nonzero(~done).flatten()
        for step in range(cfg.steps - 1):
            if len(active) == 0:
                break
            side = max(1, min(h - 1, round(np.sqrt(window_share(step, cfg.steps) * h * w))))
            cand = x_adv[active].clone()
            for j, i in enumerate(active.tolist()):
                g = gens[i]
                r, s = (int(v) for v in torch.randint(0, h - side + 1, (2,), generator=g))
                s = min(s, w - side)
                signs = (torch.randint(0, 2, (ch, 1, 1), generator=g).float() * 2 - 1).to(x.device)
                cand[j, :, r : r + side, s : s + side] = x[i, :, r : r + side, s : s + side] + cfg.eps * signs
            cand = self.project(cand, x[active])
            with torch.no_grad():
                new = -margin(self.model(cand), targets[active], self.targeted)
            self.passes[active.cpu()] += 1
            keep = new < loss[active]
            x_adv[active[keep]], loss[active[keep]] = cand[keep], new[keep]
            done, q = self.judge_8bit(x_adv[active], x[active], targets[active], 0.0)
            x_adv[active[done]] = q[done]
            active = active[~done]
        return x_adv
