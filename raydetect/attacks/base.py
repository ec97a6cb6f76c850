"""What every attack shares: targets, the eps-ball, and judging success on the 8-bit image.

:class:`Attack` owns device placement, eval mode, target selection, projection and the final
judgement; each subclass only writes :meth:`Attack.perturb`. An auditor receives 8-bit images,
so by default the result is rounded to the 8-bit grid *inside* the eps-ball and success is
judged again on that image (``success``); ``success_float`` keeps the verdict before rounding.
Success is judged against the true label where known (else the clean prediction).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raydetect.config import AttackConfig
from raydetect.images import jpeg_roundtrip, resize_roundtrip
from raydetect.models import ImageClassifier
from raydetect.models.runtime import seeded_uniform


@dataclass
class AttackResult:
    """Per-image outcome of one attack on a batch; every tensor has length N and lives on the CPU."""

    adversarial: torch.Tensor  # (N, C, H, W) in [0, 1]; on the 8-bit grid unless quantize=False
    labels: torch.Tensor  # (N,) reference labels: the true label, or the clean prediction if unknown
    targets: torch.Tensor  # (N,) the class the attack pushes toward (targeted) or away from (untargeted)
    clean_pred: torch.Tensor  # (N,)
    clean_conf: torch.Tensor  # (N,) softmax probability of clean_pred
    adv_pred: torch.Tensor  # (N,) on the returned (8-bit) image
    adv_conf: torch.Tensor  # (N,)
    correct: torch.Tensor  # (N,) bool: clean prediction equals the reference label
    success: torch.Tensor  # (N,) bool: attack goal met on the returned image
    success_float: torch.Tensor  # (N,) bool: attack goal met before rounding to 8 bits
    passes: torch.Tensor  # (N,) gradient passes through the classifier the attack spent per image

    def success_rate(self) -> float:
        """Success over correctly classified images only (NaN when there are none)."""
        n = int(self.correct.sum())
        return float((self.success & self.correct).sum()) / n if n else float("nan")


def stable_key(text: str) -> int:
    """A per-image integer derived from its id, so randomness does not depend on batching."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def random_targets(labels: np.ndarray, num_classes: int, seed: int, keys: np.ndarray) -> np.ndarray:
    """A uniformly random class other than the label, reproducible per image (keyed, not batch-order)."""
    out = np.empty(len(labels), dtype=np.int64)
    for i, (label, key) in enumerate(zip(labels, keys, strict=True)):
        rng = np.random.default_rng([seed, int(key) & 0x7FFFFFFF])
        t = int(rng.integers(num_classes - 1))
        out[i] = t + 1 if t >= label else t  # skip the label itself
    return out


def is_success(pred: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, targeted: bool) -> torch.Tensor:
    return pred == targets if targeted else pred != labels


def margin(logits: torch.Tensor, targets: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(N,) logit margin of the attack's goal: > 0 exactly when it is met.

    Targeted: z_t - max_{j != t} z_j. Untargeted (``targets`` are the labels): max_{j != y} z_j - z_y.
    """
    own = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf")).max(1).values
    return own - others if targeted else others - own


def quantize(images: torch.Tensor, clean: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    """Round [0,1] images to the 8-bit grid, as saving to PNG does.

    With ``clean`` and ``eps``, levels that rounding pushed outside the eps-ball are moved to the
    nearest grid level inside it, so the saved image still honours the attack's budget.
    """
    q = torch.clamp(torch.round(images * 255.0), 0, 255)
    if clean is not None and eps is not None:
        q = _levels_in_ball(q, clean, eps)
    return q / 255.0


def _levels_in_ball(q: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit levels ``q`` moved to the nearest level inside the eps-ball around ``clean``."""
    hi = torch.floor((clean + eps) * 255.0 + 1e-4)
    lo = torch.ceil((clean - eps) * 255.0 - 1e-4)
    return torch.clamp(torch.minimum(torch.maximum(q, lo), hi), 0, 255)


def quantize_away(images: torch.Tensor, clean: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Round each pixel's change to the 8-bit grid *away* from the clean image, so a perturbation below
    half a grey level survives saving as at least one level (a minimal attack's last resort).
    With ``eps`` the result stays inside the eps-ball, as :func:`quantize` keeps it."""
    base = torch.round(clean * 255.0)
    delta = images * 255.0 - base
    q = torch.clamp(base + torch.sign(delta) * torch.ceil(delta.abs() - 1e-4), 0, 255)
    if eps is not None:
        q = _levels_in_ball(q, clean, eps)
    return q / 255.0


def post_process(images: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """``cfg.post`` applied to the attack's result: what the dataset's pipeline makes of a planted image."""
    step = cfg.post_step
    if step is None:
        return images
    kind, param = step
    return jpeg_roundtrip(images, int(param)) if kind == "jpeg" else resize_roundtrip(images, param)


def keyed_uniform(keys: np.ndarray, seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, *shape) noise in [-1, 1), keyed per image as :func:`models.runtime.seeded_uniform`."""
    return seeded_uniform(keys, seed, shape, device) * 2 - 1


class Attack:
    """Base class: subclasses implement :meth:`perturb` over a batch already on the model's device."""

    # Gradient passes per image that one loss_gradient_sign call costs.
    grad_cost = 1

    def __init__(self, model: ImageClassifier, cfg: AttackConfig, quantize: bool = True) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.quantize = quantize
        self.targeted = cfg.mode != "untargeted"
        self.passes = torch.zeros(0)
        self.keys = np.zeros(0, dtype=np.int64)  # the batch's per-image keys, set by __call__

    def random_start(self, x: torch.Tensor, draw: int = 0) -> torch.Tensor:
        """A uniformly random point of each image's eps-ball, keyed per image (``draw`` numbers restarts)."""
        noise = keyed_uniform(self.keys, self.cfg.seed + 7919 * draw, tuple(x.shape[1:]), x.device)
        return self.project(x + self.cfg.eps * noise, x)

    # -- helpers shared by every attack ------------------------------------------------------
    def loss_gradient_sign(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sign of the gradient of the step direction: ascend CE(y) untargeted, descend CE(t) targeted."""
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(self.model(x), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return -grad.sign() if self.targeted else grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """clip_{x,eps}: back into the eps-ball around x, then into the valid pixel range."""
        eps = self.cfg.eps
        return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0).detach()

    def choose_targets(self, logits: torch.Tensor, labels: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
        if self.cfg.mode == "untargeted":
            return labels
        if self.cfg.mode == "second":
            # Most confident class other than the label: the 2nd most confident when correct.
            masked = logits.clone()
            masked[torch.arange(len(labels)), labels] = float("-inf")
            return masked.argmax(1)
        t = random_targets(labels.cpu().numpy(), logits.shape[1], self.cfg.seed, keys)
        return torch.from_numpy(t).to(labels.device)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, class) of the model's prediction."""
        with torch.no_grad():
            conf, pred = self.model(x).softmax(1).max(1)
        return conf, pred

    def margin_8bit(self, x_adv: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(goal margin, 8-bit image) of the 8-bit copy of each iterate: what the attack would return."""
        q = quantize(x_adv, x, self.cfg.eps) if self.quantize else x_adv
        with torch.no_grad():
            return margin(self.model(q), targets, self.targeted), q

    def reached(
        self, x_adv: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, above: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(done, 8-bit image): whether the 8-bit copy of each iterate meets the goal by more than ``above``."""
        m, q = self.margin_8bit(x_adv, x, targets)
        return m > above, q

    def judge_8bit(
        self, x_adv: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, above: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(done, image to keep) for a minimal attack: the nearest 8-bit copy if it meets the goal by more than
        ``above``, else the copy rounded away from the clean image (a sub-level perturbation survives)."""
        done, q = self.reached(x_adv, x, targets, above)
        if not self.quantize or bool(done.all()):
            return done, q
        rest = torch.nonzero(~done).flatten()  # only these need the second try
        away = quantize_away(x_adv[rest], x[rest], self.cfg.eps)
        with torch.no_grad():
            away_ok = margin(self.model(away), targets[rest], self.targeted) > above
        done, q = done.clone(), q.clone()
        done[rest], q[rest] = away_ok, away
        return done, q

    # -- the attack --------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, keys: np.ndarray | None = None) -> AttackResult:
        """Attack a batch (N, C, H, W) in [0,1]. Labels < 0 (unknown) fall back to the clean prediction.

        ``keys`` (N,) seed per-image randomness (random targets, random starts), so results do not depend
        on how images are batched; they default to the position in the batch.
        """
        x = images.to(self.model.device, torch.float32)
        with torch.no_grad():
            logits = self.model(x)
        clean_conf, clean_pred = logits.softmax(1).max(1)
        labels = torch.full_like(clean_pred, -1) if labels is None else labels.to(x.device)
        ref = torch.where(labels >= 0, labels, clean_pred)
        self.keys = np.arange(len(x)) if keys is None else np.asarray(keys)
        targets = self.choose_targets(logits, ref, self.keys)

        self.passes = torch.zeros(len(x))
        x_float = self.perturb(x, targets)
        success_float = is_success(self.predict(x_float)[1], ref, targets, self.targeted)
        x_adv = quantize(x_float, x, self.cfg.eps) if self.quantize else x_float
        x_adv = post_process(x_adv, self.cfg)
        adv_conf, adv_pred = self.predict(x_adv)
        return AttackResult(
            adversarial=x_adv.cpu(),
            labels=ref.cpu(),
            targets=targets.cpu(),
            clean_pred=clean_pred.cpu(),
            clean_conf=clean_conf.cpu(),
            adv_pred=adv_pred.cpu(),
            adv_conf=adv_conf.cpu(),
            correct=(clean_pred == ref).cpu(),
            success=is_success(adv_pred, ref, targets, self.targeted).cpu(),
            success_float=success_float.cpu(),
            passes=self.passes.clone(),
        )
