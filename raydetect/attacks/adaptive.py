"""The adaptive attack: white-box PGD against the classifier *and* the detector at once.

Minimises   max(-margin(x'), -kappa) + lam * detector_logit(x') [x' fools the model]   over the
eps-ball (the detector term counts once the model is fooled, so it cannot keep an image on the
clean side), where the
detector logit runs through the whole differentiable score (model, baseline, Integrated
Gradients path, descriptor, head; for tree heads a differentiable surrogate fitted to the same
features: BPDA). Follows Carlini & Wagner 2017 and Tramer et al. 2020: many steps, random
restarts, a per-image search over lam, the best iterate kept (fools the model, lowest logit of
the detector itself on the 8-bit copy), an expectation over any randomness of the defense the
attacker cannot compute (EOT; with the public key it computes every draw), and gradients through a
smoothed copy of the network (ReLU -> softplus) so second-order terms of the explanation exist.
Every result is rounded to 8 bits inside the ball and judged again like the other attacks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import numpy as np
import torch

from raydetect.attacks.base import Attack, margin
from raydetect.config import AttackConfig
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier
from raydetect.models.classifier import smooth_activations

DEFAULT_KAPPA = 0.5  # logit margin kept beyond the boundary, so 8-bit rounding does not undo the attack
# Guessed draws that judge iterates are not the ones their gradients used: an iterate that does well
# only at the draws it was optimised for must not look best.
JUDGE_DRAWS = 1 << 40


class DetectorLogit(Protocol):
    """What the attack needs of a detector: a differentiable log-odds of "adversarial"."""

    threshold_logit: float  # the detector flags an image when its logit exceeds this
    passes: int  # gradient passes through the classifier per image per call
    random: bool  # whether the attacker must guess the defense's randomness (then EOT averages over draws)

    def __call__(self, x: torch.Tensor, draw: int, keys: np.ndarray | None = None) -> torch.Tensor:
        """(N,) logits with the graph kept; ``draw`` numbers the EOT sample of the defense's randomness,
        drawn per image from its key in ``keys`` (N,), so that neither the batch nor the device changes it."""
        ...

    def judge(self, x: torch.Tensor, draw: int, keys: np.ndarray | None = None) -> torch.Tensor:
        """(N,) logits of the detector itself (no smoothing, no graph), as the attacker can estimate them."""
        ...


class Adaptive(Attack):
    def __init__(
        self, model: ImageClassifier, cfg: AttackConfig, quantize: bool = True, detector: DetectorLogit | None = None
    ) -> None:
        super().__init__(model, cfg, quantize)
        if detector is None:
            raise RaydetectError("the adaptive attack needs the detector it attacks; pass --detector BUNDLE")
        self.detector = detector
        self.kappa = DEFAULT_KAPPA if cfg.stop_margin is None else cfg.stop_margin

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, len(x)
        eot = cfg.eot if self.detector.random else 1  # nothing random to average over: one draw is exact
        lam = torch.full((n,), float(cfg.lam), device=x.device)
        best = x.clone()
        best_key = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)  # lower is better (see _key)
        for restart in range(max(cfg.restarts, cfg.lam_search + 1)):
            x_adv = x.clone() if restart == 0 else self.random_start(x, restart)
            run_evaded = torch.zeros(n, dtype=torch.bool, device=x.device)
            run_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
            for step in range(cfg.steps):
                xa = x_adv.detach().requires_grad_(True)
                smooth = smooth_activations(self.model, cfg.smooth) if cfg.smooth > 0 else nullcontext()
                with smooth:
                    m = margin(self.model(xa), targets, self.targeted)
                    draw = (restart * cfg.steps + step) * eot
                    det = torch.stack([self.detector(xa, draw + d, self.keys) for d in range(eot)]).mean(0)
                    # Fool the model first: the detector term counts only for iterates that already fool
                    # it, so it can never hold an image on the clean side of the boundary.
                    loss = torch.clamp(-m, min=-self.kappa) + lam * det * (m.detach() > 0)
                    (grad,) = torch.autograd.grad(loss.sum(), xa)
                # Keep the best iterate seen (the one just evaluated, before this step moves it), judged on
                # its 8-bit copy, which is what the attack returns, by the model and by the detector itself
                # (not its smoothed copy, whose logit can be far from the real one).
                m_q, q = self.margin_8bit(xa.detach(), x, targets)
                judged = torch.stack([self.detector.judge(q, JUDGE_DRAWS + draw + d, self.keys) for d in range(eot)]).mean(0)
                self.passes += 1 + 2 * eot * self.detector.passes
                key = self._key(m_q, judged)
                better = key < best_key
                best[better], best_key[better] = q[better], key[better]
                run_fooled |= m_q > 0
                run_evaded |= (m_q > 0) & (judged <= self.detector.threshold_logit)
                x_adv = self.project(xa.detach() - cfg.step_size * grad.sign(), x)
            if restart < cfg.lam_search:
                # Fooled but flagged: weigh the detector more; not fooled: less.
                lam = torch.where(run_fooled & ~run_evaded, lam * 2, torch.where(~run_fooled, lam / 2, lam))
        return best

    def _key(self, m: torch.Tensor, det: torch.Tensor) -> torch.Tensor:
        """Order iterates: any that fools the model beats any that does not; then the lower detector logit."""
        return torch.where(m > 0, det.double(), 1e6 - m.double())
