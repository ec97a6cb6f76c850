"""Explain actor: each row's image -> its explanation and/or peers' features -> its vector (``features``).

Input: rows of the attack job (a lossless ``png`` per row) or of the reader (an ``image``
array). Output: one row per input row, descriptor in ``features``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raydetect.attacks import stable_key
from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.detect.features import Featurizer
from raydetect.explain import feature_names
from raydetect.images import decode_png
from raydetect.models import ImageClassifier
from raydetect.outputs import FEATURE_ROWS
from raydetect.stages.rows import Stage, cell

# What a feature row keeps of its input row (an attack row, or a reader's image row).
KEPT = ("kind", "path", "label", "attack", "method", "mode", "eps", "steps", "status", "error", "correct", "success")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def row_image(batch: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The (C, H, W) image of row i: decoded from its PNG, or the reader's array."""
    return decode_png(batch["png"][i]) if "png" in batch else np.asarray(batch["image"][i], dtype=np.float32)


def row_key(row: dict[str, Any]) -> int:
    """Seed of a row's per-image randomness: clean rows by pair, adversarial rows by their own id."""
    return stable_key(row["pair_id"] if row["kind"] == "clean" else row["id"])


Job = tuple[dict[str, Any], np.ndarray, "np.ndarray | None"]  # (row, image, twin or None)


class FeatureStage(Stage):
    """Loads the model once, explains each row's image and writes its descriptor.

    Adversarial rows whose attack failed are passed through as ``skipped`` (nothing to detect);
    error rows pass through untouched. With the paper's ``pair`` baseline, rows are grouped by
    ``pair_id`` within the batch (use ``groupby('pair_id')`` upstream) and every clean image is
    explained once per attack, against that attack's adversarial twin.
    """

    output = FEATURE_ROWS

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attribution: AttributionConfig,
        features: FeatureConfig,
        references: np.ndarray | None = None,
        maps_fraction: float = 0.0,
        threads: int | None = None,
        batch_size: int = 16,
        key: bytes | None = None,
    ) -> None:
        super().__init__(model_loader, threads)
        # key: the views' key, resolved by the job's driver (None: this process's RAYDETECT_SECRET); actors on
        # other nodes do not see the driver's environment.
        refs = None if references is None else torch.from_numpy(references)
        self.featurizer = Featurizer(self.model, attribution, features, refs, key)
        self.attribution = attribution
        self.cfg = features
        self.maps_fraction = maps_fraction
        self.batch_size = batch_size
        self.dim = len(feature_names(features, attribution))

    def _base_row(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        """The input row's columns that a feature row keeps (the reader's rows lack the attack's)."""
        kept = {c: cell(batch, c, i, None) for c in KEPT}
        row = FEATURE_ROWS.row(**{c: v for c, v in kept.items() if v is not None}, features=np.zeros(self.dim, np.float32))
        row["id"] = str(batch["id"][i])
        row["pair_id"] = str(cell(batch, "pair_id", i, batch["id"][i]))
        return row

    def _jobs(self, batch: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[Job]]:
        """(rows that pass through unexplained, rows to explain with image and optional twin)."""
        rows = [self._base_row(batch, i) for i in range(len(batch["id"]))]
        for r in rows:
            if r["status"] == "ok" and r["kind"] == "adversarial" and not r["success"]:
                r["status"], r["error"] = "skipped", "attack did not succeed; nothing to detect"
        if self.attribution.baseline != "pair":
            passthrough = [r for r in rows if r["status"] != "ok"]
            return passthrough, [(r, row_image(batch, i), None) for i, r in enumerate(rows) if r["status"] == "ok"]
        return self._pair_jobs(batch, rows)

    def _pair_jobs(self, batch: dict[str, np.ndarray], rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Job]]:
        """Paper protocol: each clean image against each successful twin, and the twin against it."""
        passthrough: list[dict[str, Any]] = []
        todo: list[Job] = []
        by_pair: dict[str, dict[str, list[int]]] = {}
        for i, r in enumerate(rows):
            if r["status"] != "ok":
                passthrough.append(r)
                continue
            by_pair.setdefault(r["pair_id"], {"clean": [], "adversarial": []})[r["kind"]].append(i)
        for group in by_pair.values():
            if not group["clean"] or not group["adversarial"]:
                lonely, reason = (
                    (group["clean"], "no adversarial twin to explain against (paper protocol)")
                    if group["clean"]
                    else (group["adversarial"], "no clean twin in this group (paper protocol)")
                )
                for i in lonely:
                    rows[i]["status"], rows[i]["error"] = "skipped", reason
                    passthrough.append(rows[i])
                continue
            c = group["clean"][0]
            clean_img = row_image(batch, c)
            for i in group["adversarial"]:
                adv_img = row_image(batch, i)
                clean_row = {**rows[c], "id": f"{rows[c]['pair_id']}|clean|{rows[i]['attack']}"}
                clean_row.update({k: rows[i][k] for k in ("attack", "method", "mode", "eps", "steps")})
                todo.append((clean_row, clean_img, adv_img))
                todo.append((rows[i], adv_img, clean_img))
        return passthrough, todo

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        out, todo = self._jobs(batch)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            x = torch.from_numpy(np.stack([img for _, img, _ in chunk]))
            twins = None if chunk[0][2] is None else torch.from_numpy(np.stack([t for _, _, t in chunk]))  # type: ignore[misc]
            keys = np.array([row_key(r) for r, _, _ in chunk])
            f = self.featurizer(x, keys=keys, twins=twins)
            expl, feats = f.explanation, f.features.cpu().numpy()
            targets = f.targets.cpu()
            probs = f.logits.softmax(1).cpu()
            for j, (row, _, _) in enumerate(chunk):
                row["features"] = feats[j]
                row["pred"] = int(targets[j])
                row["conf"] = float(probs[j, targets[j]])
                if expl is not None and self.maps_fraction > 0 and (keys[j] % 10_000) < self.maps_fraction * 10_000:
                    row["map"] = _npy_bytes(expl.attributions[j].sum(0).cpu().numpy())
                out.append(row)
        return out
