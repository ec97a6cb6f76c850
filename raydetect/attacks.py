"""L-inf attacks on [0,1] images: BIM (Kurakin et al.), FGSM, PGD, and the paper's single-step "BIM".

The :class:`Attack` base owns device placement, eval mode, target selection, clamping and the
success check; each subclass only writes its update rule. Success is judged against the true
label where known (else the clean prediction) and is reported over correctly classified images,
as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydetect.config import AttackConfig
from raydetect.models import ImageClassifier, set_threads


@dataclass
class AttackResult:
    """Per-image outcome of one attack on a batch; tensors of length N live on the CPU."""

    adversarial: torch.Tensor  # (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # (N,) reference labels: the true label, or the clean prediction if unknown
    targets: torch.Tensor  # (N,) the class the attack pushes toward (targeted) or away from (untargeted)
    clean_pred: torch.Tensor  # (N,)
    clean_conf: torch.Tensor  # (N,) softmax probability of clean_pred
    adv_pred: torch.Tensor  # (N,)
    adv_conf: torch.Tensor  # (N,)
    correct: torch.Tensor  # (N,) bool: clean prediction equals the reference label
    success: torch.Tensor  # (N,) bool: attack goal met (untargeted: label changed; targeted: target hit)

    def success_rate(self) -> float:
        """Success over correctly classified images only (NaN when there are none)."""
        n = int(self.correct.sum())
        return float((self.success & self.correct).sum()) / n if n else float("nan")


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


class Attack:
    """Base class: subclasses implement :meth:`perturb` over a batch already on the model's device."""

    def __init__(self, model: ImageClassifier, cfg: AttackConfig) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.targeted = cfg.mode != "untargeted"

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

    # -- the attack --------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, keys: np.ndarray | None = None) -> AttackResult:
        """Attack a batch (N, C, H, W) in [0,1]. Labels < 0 (unknown) fall back to the clean prediction.

        ``keys`` (N,) seed per-image randomness (random targets), so results do not depend on how
        images are batched; they default to the position in the batch.
        """
        device = self.model.device
        x = images.to(device, torch.float32)
        with torch.no_grad():
            logits = self.model(x)
        probs = logits.softmax(1)
        clean_conf, clean_pred = probs.max(1)
        if labels is None:
            labels = torch.full_like(clean_pred, -1)
        labels = labels.to(device)
        ref = torch.where(labels >= 0, labels, clean_pred)
        if keys is None:
            keys = np.arange(len(x))
        targets = self.choose_targets(logits, ref, keys)

        x_adv = self.perturb(x, targets)

        with torch.no_grad():
            adv_conf, adv_pred = self.model(x_adv).softmax(1).max(1)
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
        )


class FGSM(Attack):
    """One signed-gradient step of size eps (Goodfellow et al.)."""

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.project(x + self.cfg.eps * self.loss_gradient_sign(x, targets), x)


class BIM(Attack):
    """Kurakin et al.: x_{i+1} = clip_{x,eps}(x_i + alpha * sign(grad J(x_i))), starting at x_0 = x."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x_adv = self.start(x)
        for _ in range(self.cfg.steps):
            x_adv = self.project(x_adv + self.cfg.step_size * self.loss_gradient_sign(x_adv, targets), x)
        return x_adv


class PGD(BIM):
    """BIM from a uniformly random start inside the eps-ball (Madry et al.)."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(self.cfg.seed)
        noise = torch.rand(x.shape, generator=g, device=x.device) * 2 - 1
        return self.project(x + self.cfg.eps * noise, x)


class PaperBIM(FGSM):
    """What the paper's code ran as "BIM": each iteration restarts from the clean image.

    Every step computes the gradient at x and returns x + eps*sign(grad), so after any number of
    iterations the result is a single eps-sized FGSM step. Kept to replicate the paper's numbers.
    """


ATTACKS: dict[str, type[Attack]] = {"bim": BIM, "fgsm": FGSM, "pgd": PGD, "paper_bim": PaperBIM}


def make_attack(model: ImageClassifier, cfg: AttackConfig) -> Attack:
    return ATTACKS[cfg.method](model, cfg)


def gradient_passes(cfg: AttackConfig) -> int:
    """Forward+backward passes the attack costs per image (not counting the clean/adv predictions)."""
    return cfg.effective_steps


# --------------------------------------------------------------------------------------------
# Ray Data stage
#
# One input row per image (schema of raydetect.data.read_source) becomes one "clean" row plus one
# "adversarial" row per attack. Images travel as lossless 8-bit PNG: the adversarial image an
# auditor would receive, on which success is re-checked.

ATTACK_COLUMNS = (
    "id", "pair_id", "kind", "path", "label", "status", "error", "attack", "method", "mode", "eps", "alpha", "steps",
    "target", "clean_pred", "clean_conf", "pred", "conf", "correct", "success", "success_float", "linf", "png",
)  # fmt: skip


def stable_key(text: str) -> int:
    """A per-image integer derived from its id, so randomness does not depend on batching."""
    import hashlib

    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def _clean_row(image_id: str, path: str, label: int, status: str, error: str) -> dict[str, object]:
    return {
        "id": image_id, "pair_id": image_id, "kind": "clean", "path": path, "label": label, "status": status,
        "error": error, "attack": "", "method": "", "mode": "", "eps": 0.0, "alpha": 0.0, "steps": 0, "target": -1,
        "clean_pred": -1, "clean_conf": 0.0, "pred": -1, "conf": 0.0, "correct": False, "success": False,
        "success_float": False, "linf": 0.0, "png": b"",
    }  # fmt: skip


class AttackStage:
    """Loads the model once (``model_loader``), then attacks each batch with every configured attack.

    ``only_correct`` skips attacks on images the model already gets wrong (the paper's protocol;
    unlabeled images count as correct). Call it directly on a numpy batch to test it without Ray.
    """

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attacks: Sequence[AttackConfig],
        only_correct: bool = True,
        threads: int | None = None,
    ) -> None:
        # Threads are set in __call__, not here: see set_threads.
        self.threads = threads
        self.model = model_loader()
        self.configs = list(attacks)
        self.attacks = [make_attack(self.model, cfg) for cfg in self.configs]
        self.only_correct = only_correct

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raydetect.data import encode_png, quantize, rows_to_batch

        set_threads(self.threads)
        n = len(batch["id"])
        rows = [
            _clean_row(
                str(batch["id"][i]),
                str(batch["path"][i]),
                int(batch["label"][i]),
                str(batch["status"][i]),
                str(batch["error"][i]),
            )
            for i in range(n)
        ]
        ok = np.flatnonzero(batch["status"] == "ok")
        if len(ok) == 0:
            return rows_to_batch(rows)
        # What is stored is 8-bit; attack and judge exactly that image.
        x = torch.from_numpy(quantize(np.asarray(batch["image"][ok], dtype=np.float32)))
        labels = torch.from_numpy(np.asarray(batch["label"][ok], dtype=np.int64))
        keys = np.array([stable_key(str(batch["id"][i])) for i in ok])
        device = self.model.device
        with torch.no_grad():
            conf, pred = self.model(x.to(device)).softmax(1).max(1)
        pred, conf = pred.cpu(), conf.cpu()
        ref = torch.where(labels >= 0, labels, pred)
        correct = pred == ref
        for j, i in enumerate(ok):
            rows[i].update(
                clean_pred=int(pred[j]),
                clean_conf=float(conf[j]),
                pred=int(pred[j]),
                conf=float(conf[j]),
                correct=bool(correct[j]),
                png=encode_png(x[j].numpy()),
            )
        sel = np.flatnonzero(correct.numpy()) if self.only_correct else np.arange(len(ok))
        if len(sel) == 0:
            return rows_to_batch(rows)
        xs = x[sel]
        for cfg, attack in zip(self.configs, self.attacks, strict=True):
            res = attack(xs, labels[sel], keys[sel])
            adv = torch.from_numpy(quantize(res.adversarial.numpy(), xs.numpy(), cfg.eps))
            with torch.no_grad():
                adv_conf, adv_pred = self.model(adv.to(device)).softmax(1).max(1)
            adv_pred, adv_conf = adv_pred.cpu(), adv_conf.cpu()
            success = is_success(adv_pred, res.labels, res.targets, attack.targeted)
            linf = (adv - xs).flatten(1).abs().max(1).values
            for j, s in enumerate(sel):
                base = rows[ok[s]]
                rows.append(
                    {
                        **base,
                        "id": f"{base['pair_id']}|{cfg.name}",
                        "kind": "adversarial",
                        "attack": cfg.name, "method": cfg.method, "mode": cfg.mode, "eps": cfg.eps,
                        "alpha": cfg.step_size, "steps": cfg.effective_steps, "target": int(res.targets[j]),
                        "pred": int(adv_pred[j]), "conf": float(adv_conf[j]), "success": bool(success[j]),
                        "success_float": bool(res.success[j]), "linf": float(linf[j]), "png": encode_png(adv[j].numpy()),
                    }
                )  # fmt: skip
        return rows_to_batch(rows)


def attack_dataset(
    ds: Any, model_loader: Callable[[], ImageClassifier], attacks: Sequence[AttackConfig], plan: Any, only_correct: bool = True
) -> Any:
    """Ray Data stage: image rows -> clean + adversarial rows, on an actor pool sized by ``plan``."""
    from raydetect.pipeline import map_actors

    return map_actors(ds, AttackStage, (model_loader, tuple(attacks), only_correct, plan.threads), plan)
