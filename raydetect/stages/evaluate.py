"""Evaluation actor: attack each image, adaptive attacks against the detector itself, and score both.

One row per clean image and one per (image, attack), each with the detector's score and verdict
and the attack's outcome and cost, so robustness figures (``detect.evaluation``) come from the
same score an audit uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from raydetect.attacks import quantize, stable_key
from raydetect.config import AttackConfig
from raydetect.detect import Detector
from raydetect.models import ImageClassifier
from raydetect.outputs import EVALUATION_ROWS
from raydetect.stages.attack import build_attacks, judged_on
from raydetect.stages.rows import Stage


def detector_labels(detectors: Sequence[Detector]) -> list[str]:
    """One distinct label per detector (its ``label``; repeats numbered), the ``detector`` of its rows."""
    labels: list[str] = []
    for d in detectors:
        base = d.label
        labels.append(base if base not in labels else f"{base}#{len(labels) + 1}")
    return labels


class EvaluateStage(Stage):
    """Attacks each batch once and scores every image with each detector (``--compare``): attacks that know
    no detector are shared, each attack that knows one runs against every detector and is scored by it alone."""

    output = EVALUATION_ROWS

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        detectors: Sequence[Detector],
        attacks: Sequence[AttackConfig],
        threads: int | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__(model_loader, threads)
        self.scorers = [d.scorer(self.model) for d in detectors]
        self.thresholds = [d.threshold for d in detectors]
        self.labels = detector_labels(detectors)
        blind = [c for c in attacks if not c.spec.knows_detector]
        knowing = [c for c in attacks if c.spec.knows_detector]
        # (index of the one detector that judges it, or None for all; config; attack)
        self.attacks: list[tuple[int | None, AttackConfig, Any]] = [
            (None, c, a) for c, a in build_attacks(self.model, blind, None)
        ]
        for k, d in enumerate(detectors):
            self.attacks += [(k, c, a) for c, a in build_attacks(self.model, knowing, d)]
        self.batch_size = batch_size

    def _scores(self, k: int, x: torch.Tensor, keys: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                self.scorers[k](x[i : i + self.batch_size], keys[i : i + self.batch_size]).cpu().numpy()
                for i in range(0, len(x), self.batch_size)
            ]
        )

    def _suffix(self, k: int) -> str:
        return f"@{self.labels[k]}" if k else ""

    def _judged(self, k: int | None) -> list[int]:
        return list(range(len(self.scorers))) if k is None else [k]

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        base = [
            EVALUATION_ROWS.row(id=str(i), pair_id=str(i), status=str(s), error=str(e), label=int(lb))
            for i, lb, s, e in zip(batch["id"], batch["label"], batch["status"], batch["error"], strict=True)
        ]
        # One clean row per image and detector; ids stay unique (the first detector's are the image ids, which resume reads).
        rows = [{**r, "id": r["id"] + self._suffix(k), "detector": label} for k, label in enumerate(self.labels) for r in base]
        ok = np.flatnonzero(batch["status"] == "ok")
        if len(ok) == 0:
            return rows
        x = quantize(torch.from_numpy(np.asarray(batch["image"][ok], dtype=np.float32)))  # what an auditor receives
        labels = torch.from_numpy(np.asarray(batch["label"][ok], dtype=np.int64))
        with torch.no_grad():
            pred = self.model(x.to(self.model.device)).argmax(1).cpu()
        ref = torch.where(labels >= 0, labels, pred)
        correct = (pred == ref).numpy()
        for j, i in enumerate(ok):
            base[i].update(pred=int(pred[j]), correct=bool(correct[j]))
        clean_keys = np.array([stable_key(base[i]["id"]) for i in ok])
        n = len(base)
        for k in range(len(self.scorers)):
            scores = self._scores(k, x, clean_keys)
            for j, i in enumerate(ok):
                rows[k * n + i].update(pred=int(pred[j]), correct=bool(correct[j]), score=float(scores[j]),
                                       flagged=bool(scores[j] > self.thresholds[k]))  # fmt: skip
        sel = np.flatnonzero(correct)
        if len(sel) == 0:
            return rows
        xs = x[sel]
        keys = np.array([stable_key(base[ok[s]]["id"]) for s in sel])
        for target, cfg, attack in self.attacks:
            res = judged_on(self.model, cfg, attack(xs, ref[sel], keys))
            adv, adv_pred, success = res.adversarial, res.adv_pred, res.success.numpy()
            ids = [f"{base[ok[s]]['id']}|{cfg.name}" for s in sel]
            adv_keys = np.array([stable_key(i) for i in ids])
            linf = (adv - xs).flatten(1).abs().max(1).values
            for k in self._judged(target):
                adv_scores = self._scores(k, adv, adv_keys)
                for j, s in enumerate(sel):
                    rows.append({
                        **base[ok[s]], "id": ids[j] + self._suffix(k), "kind": "adversarial", "attack": cfg.name,
                        "method": cfg.method, "mode": cfg.mode, "eps": cfg.eps, "pred": int(adv_pred[j]),
                        "success": bool(success[j]), "score": float(adv_scores[j]),
                        "flagged": bool(adv_scores[j] > self.thresholds[k]), "passes": float(res.passes[j]),
                        "linf": float(linf[j]), "detector": self.labels[k],
                    })  # fmt: skip
        return rows
