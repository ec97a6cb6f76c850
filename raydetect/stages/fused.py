"""Attack and explain in one actor: one model load, no Parquet round trip between the stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig
from raydetect.models import ImageClassifier
from raydetect.stages.attack import AttackStage
from raydetect.stages.explain import FeatureStage


class AttackFeatureStage:
    """:class:`AttackStage` then :class:`FeatureStage` on one model.

    Rows carry the attack outcome (kind, success, correct), which is all Table 1 needs.
    ``keep_png`` also keeps each row's image (clean or adversarial).
    """

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attacks: Sequence[AttackConfig],
        attribution: AttributionConfig,
        features: FeatureConfig,
        only_correct: bool = True,
        threads: int | None = None,
        batch_size: int = 16,
        keep_png: bool = False,
    ) -> None:
        self.attack = AttackStage(model_loader, attacks, only_correct, threads)
        model = self.attack.model
        self.explain = FeatureStage(lambda: model, attribution, features, None, 0.0, threads, batch_size)
        self.keep_png = keep_png

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        attacked = self.attack(batch)
        table = self.explain(attacked)
        if self.keep_png and table.num_rows:
            png = dict(zip(attacked["id"], attacked["png"], strict=True))
            table = table.append_column("png", pa.array([png[i] for i in table.column("id").to_pylist()], pa.binary()))
        return table
