"""Attack and explain in one actor: one model load, no Parquet or PNG round trip between the stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig
from raydetect.images import encode_png
from raydetect.models import ImageClassifier
from raydetect.stages.attack import AttackStage
from raydetect.stages.explain import FeatureStage
from raydetect.stages.rows import rows_to_batch


class AttackFeatureStage:
    """:class:`AttackStage` then :class:`FeatureStage` on one model.

    Rows carry the attack outcome (kind, success, correct), which is all Table 1 needs.
    ``keep_png`` also keeps each row's image (clean or adversarial) as PNG. The explainer gets
    the attack's 8-bit images as arrays: a PNG round trip would return the same values (the
    images are on the 8-bit grid already) at about 15 ms per image (BENCHMARKS.md).
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
        key: bytes | None = None,
    ) -> None:
        self.attack = AttackStage(model_loader, attacks, only_correct, threads)
        model = self.attack.model
        self.explain = FeatureStage(lambda: model, attribution, features, None, 0.0, threads, batch_size, key)
        self.keep_png = keep_png

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        rows, images = self.attack.attack_rows(batch)
        if not rows:
            return pa.table({})
        attacked = rows_to_batch(rows)
        del attacked["png"]  # the explainer reads "image" where a batch has no "png"
        shape = next((im.shape for im in images if im is not None), None)
        if shape is not None:  # rows without an image (errors) pass through unexplained: any array will do
            blank = np.zeros(shape, np.float32)
            attacked["image"] = np.stack([blank if im is None else im for im in images])
        table = self.explain(attacked)
        if self.keep_png and table.num_rows:
            png = {row["id"]: encode_png(im) for row, im in zip(rows, images, strict=True) if im is not None}
            ids = table.column("id").to_pylist()
            table = table.append_column("png", pa.array([png.get(i, b"") for i in ids], pa.binary()))
        return table
