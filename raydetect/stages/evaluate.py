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
from raydetect.models.runtime import set_threads, trim_heap
from raydetect.stages.attack import build_attacks, judged_on
from raydetect.stages.rows import rows_to_table


class EvaluateStage:
    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        detector: Detector,
        attacks: Sequence[AttackConfig],
        threads: int | None = None,
        batch_size: int = 16,
    ) -> None:
        self.threads = threads  # set in __call__, not here: see set_threads
        self.model = model_loader()
        self.scorer = detector.scorer(self.model)
        self.threshold = detector.threshold
        self.attacks = build_attacks(self.model, attacks, detector)
        self.batch_size = batch_size

    def _scores(self, x: torch.Tensor, keys: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                self.scorer(x[i : i + self.batch_size], keys[i : i + self.batch_size]).cpu().numpy()
                for i in range(0, len(x), self.batch_size)
            ]
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        set_threads(self.threads)
        rows: list[dict[str, Any]] = [
            {"id": str(i), "pair_id": str(i), "kind": "clean", "attack": "", "method": "", "mode": "", "eps": 0.0,
             "status": str(s), "error": str(e), "label": int(lb), "pred": -1, "correct": False, "success": False,
             "score": float("nan"), "flagged": False, "passes": 0.0, "linf": 0.0}
            for i, lb, s, e in zip(batch["id"], batch["label"], batch["status"], batch["error"], strict=True)
        ]  # fmt: skip
        ok = np.flatnonzero(batch["status"] == "ok")
        if len(ok) == 0:
            return rows_to_table(rows)
        x = quantize(torch.from_numpy(np.asarray(batch["image"][ok], dtype=np.float32)))  # what an auditor receives
        labels = torch.from_numpy(np.asarray(batch["label"][ok], dtype=np.int64))
        with torch.no_grad():
            pred = self.model(x.to(self.model.device)).argmax(1).cpu()
        ref = torch.where(labels >= 0, labels, pred)
        correct = (pred == ref).numpy()
        scores = self._scores(x, np.array([stable_key(rows[i]["id"]) for i in ok]))
        for j, i in enumerate(ok):
            rows[i].update(
                pred=int(pred[j]), correct=bool(correct[j]), score=float(scores[j]), flagged=bool(scores[j] > self.threshold)
            )
        sel = np.flatnonzero(correct)
        if len(sel) == 0:
            return rows_to_table(rows)
        xs, keys = x[sel], np.array([stable_key(rows[ok[s]]["id"]) for s in sel])
        for cfg, attack in self.attacks:
            res = judged_on(self.model, cfg, attack(xs, ref[sel], keys))
            adv, adv_pred, success = res.adversarial, res.adv_pred, res.success.numpy()
            ids = [f"{rows[ok[s]]['id']}|{cfg.name}" for s in sel]
            adv_scores = self._scores(adv, np.array([stable_key(i) for i in ids]))
            linf = (adv - xs).flatten(1).abs().max(1).values
            for j, s in enumerate(sel):
                base = rows[ok[s]]
                rows.append({
                    **base, "id": ids[j], "kind": "adversarial", "attack": cfg.name, "method": cfg.method, "mode": cfg.mode,
                    "eps": cfg.eps, "pred": int(adv_pred[j]), "success": bool(success[j]), "score": float(adv_scores[j]),
                    "flagged": bool(adv_scores[j] > self.threshold), "passes": float(res.passes[j]), "linf": float(linf[j]),
                })  # fmt: skip
        trim_heap()
        return rows_to_table(rows)
