"""Audit actor: each image -> the detector's score and verdict (one output row per input row)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raydetect.attacks import stable_key
from raydetect.detect import Detector
from raydetect.images import class_name
from raydetect.models import ImageClassifier
from raydetect.outputs import AUDIT_ROWS
from raydetect.stages.read import decode_rows
from raydetect.stages.rows import Stage


class AuditStage(Stage):
    """Loads the model once; scores each image with the detector's own :class:`Scorer`.

    ``detector`` is a loaded (checksum-verified) :class:`Detector`; it travels to the actors as an
    object, so workers never read bundle files themselves.
    """

    output = AUDIT_ROWS

    def __init__(
        self, model_loader: Callable[[], ImageClassifier], detector: Detector, threads: int | None = None, batch_size: int = 16
    ) -> None:
        super().__init__(model_loader, threads)
        self.scorer = detector.scorer(self.model)
        self.threshold = detector.threshold
        self.batch_size = batch_size

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        batch = decode_rows(batch, self.model.info.preprocess)  # encoded bytes on CPU jobs: see decode_rows
        rows = [
            AUDIT_ROWS.row(id=str(i), path=str(p), label=int(lb), status=str(s), error=str(e))
            for i, p, lb, s, e in zip(batch["id"], batch["path"], batch["label"], batch["status"], batch["error"], strict=True)
        ]
        ok = np.flatnonzero(batch["status"] == "ok")
        for start in range(0, len(ok), self.batch_size):
            idx = ok[start : start + self.batch_size]
            x = torch.from_numpy(np.asarray(batch["image"][idx], dtype=np.float32))
            scored = self.scorer.run(x, keys=np.array([stable_key(rows[i]["id"]) for i in idx]))
            targets = scored.targets.cpu()
            probs = scored.logits.softmax(1).cpu()
            scores = scored.score.cpu().numpy()
            for j, i in enumerate(idx):
                t = int(targets[j])
                rows[i].update(pred=t, pred_name=class_name(t, self.model.num_classes), conf=float(probs[j, t]),
                               score=float(scores[j]), adversarial=bool(scores[j] > self.threshold))  # fmt: skip
        return rows
