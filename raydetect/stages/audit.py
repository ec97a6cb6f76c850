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
from raydetect.models.runtime import set_threads, trim_heap
from raydetect.stages.read import decode_rows
from raydetect.stages.rows import rows_to_table


class AuditStage:
    """Loads the model once; scores each image with the detector's own :class:`Scorer`.

    ``detector`` is a loaded (checksum-verified) :class:`Detector`; it travels to the actors as an
    object, so workers never read bundle files themselves.
    """

    def __init__(
        self, model_loader: Callable[[], ImageClassifier], detector: Detector, threads: int | None = None, batch_size: int = 16
    ) -> None:
        self.threads = threads  # set in __call__, not here: see set_threads
        self.model = model_loader()
        self.scorer = detector.scorer(self.model)
        self.threshold = detector.threshold
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        set_threads(self.threads)
        batch = decode_rows(batch, self.model.info.preprocess)  # encoded bytes on CPU jobs: see decode_rows
        rows: list[dict[str, Any]] = [
            {"id": str(i), "path": str(p), "label": int(lb), "pred": -1, "pred_name": "", "conf": 0.0, "score": float("nan"),
             "adversarial": False, "status": str(s), "error": str(e)}
            for i, p, lb, s, e in zip(batch["id"], batch["path"], batch["label"], batch["status"], batch["error"], strict=True)
        ]  # fmt: skip
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
        trim_heap()
        return rows_to_table(rows)
