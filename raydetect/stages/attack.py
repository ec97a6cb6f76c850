"""Attack actor: one input row per image becomes one "clean" row plus one "adversarial" row per attack.

Images travel as lossless 8-bit PNG: the adversarial image an auditor would receive, on which
the attack judged its own success. Under Ray the model actor (which may hold a GPU and one CPU)
ships raw 8-bit pixels and :func:`encode_pngs`, a CPU task after it, encodes them (PIL's PNG
encoder is per-image CPU work the actor would otherwise wait on). (The fused attack+feature stage
hands the same 8-bit images to the explainer as arrays, without the PNG round trip.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raydetect.attacks import Attack, AttackResult, make_attack, quantize, stable_key
from raydetect.attacks.base import is_success
from raydetect.config import AttackConfig, ModelConfig
from raydetect.detect import Detector
from raydetect.images import encode_png, to_uint8
from raydetect.models import ImageClassifier, load_model
from raydetect.models.runtime import set_threads
from raydetect.outputs import ATTACK_ROWS
from raydetect.stages.rows import Stage

log = logging.getLogger(__name__)
PIXELS, PIXEL_SHAPE = "pixels", "pixel_shape"  # AttackStage(encode=False) -> encode_pngs, never written


def build_attacks(
    model: ImageClassifier, configs: Sequence[AttackConfig], detector: Detector | None
) -> list[tuple[AttackConfig, Attack]]:
    """Each config's attack on ``model``; a transfer attack gets its own source model (loaded once),
    attacks that know the detector get its views or its differentiable logit."""
    views = detector.views() if detector is not None else []
    logit = detector.attack_logit(model) if detector is not None and any(c.spec.needs == "detector" for c in configs) else None
    sources: dict[str, ImageClassifier] = {}
    out = []
    for cfg in configs:
        if cfg.spec.needs == "views" and detector is not None and not views:
            log.info("%s skipped against a detector that computes no views of the image", cfg.name)
            continue
        on = model
        if cfg.source_model:  # a black-box attacker's own model
            on = sources.setdefault(cfg.source_model, load_model(ModelConfig(name=cfg.source_model, device=str(model.device))))
        out.append((cfg, make_attack(on, cfg, views=views, detector=logit)))
    return out


def judged_on(model: ImageClassifier, cfg: AttackConfig, res: AttackResult) -> AttackResult:
    """A transfer attack's result as the audited model sees it (it was judged on its source model)."""
    if not cfg.source_model:
        return res
    with torch.no_grad():
        conf, pred = model(res.adversarial.to(model.device)).softmax(1).max(1)
    success = is_success(pred.cpu(), res.labels, res.targets, cfg.mode != "untargeted")
    return replace(res, adv_pred=pred.cpu(), adv_conf=conf.cpu(), success=success, success_float=success)


class AttackStage(Stage):
    """Loads the model once (``model_loader``), then attacks each batch with every configured attack.

    ``only_correct`` skips attacks on images the model already gets wrong (the paper's protocol;
    unlabeled images count as correct). Attacks that know the detector (squeeze_eot, adaptive)
    attack ``detector``. ``encode``: fill each row's ``png`` here; else the table carries the raw
    8-bit pixels for :func:`encode_pngs` to encode elsewhere. Call it directly on a numpy batch
    to test it without Ray.
    """

    output = ATTACK_ROWS

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attacks: Sequence[AttackConfig],
        only_correct: bool = True,
        threads: int | None = None,
        detector: Detector | None = None,
        encode: bool = True,
    ) -> None:
        super().__init__(model_loader, threads)
        self.attacks = build_attacks(self.model, attacks, detector)
        self.only_correct = only_correct
        self.encode = encode

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        rows, images = self.attack_rows(batch)
        for row, image in zip(rows, images, strict=True):
            if image is not None and self.encode:
                row["png"] = encode_png(image)
            elif image is not None:
                row[PIXELS] = to_uint8(image)  # not an output column: :meth:`table` adds it
        return rows

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        table = super().table(rows)
        if self.encode or not rows:
            return table
        pixels = [r.get(PIXELS) for r in rows]
        raw = pa.array([b"" if p is None else p.tobytes() for p in pixels], pa.binary())
        shape = pa.array([None if p is None else list(p.shape) for p in pixels], pa.list_(pa.int32()))
        return table.append_column(PIXELS, raw).append_column(PIXEL_SHAPE, shape)

    def attack_rows(self, batch: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
        """(rows, each row's 8-bit image as a float (C, H, W) array, or None for rows without one);
        the rows' ``png`` is left empty for the caller to fill or skip."""
        set_threads(self.threads)  # also when the fused stage calls it
        rows = [
            ATTACK_ROWS.row(id=str(i), pair_id=str(i), path=str(p), label=int(lb), status=str(s), error=str(e))
            for i, p, lb, s, e in zip(batch["id"], batch["path"], batch["label"], batch["status"], batch["error"], strict=True)
        ]
        images: list[np.ndarray | None] = [None] * len(rows)
        ok = np.flatnonzero(batch["status"] == "ok")
        if len(ok) == 0:
            return rows, images
        # What is stored is 8-bit; attack and judge exactly that image.
        x = quantize(torch.from_numpy(np.asarray(batch["image"][ok], dtype=np.float32)))
        labels = torch.from_numpy(np.asarray(batch["label"][ok], dtype=np.int64))
        keys = np.array([stable_key(str(batch["id"][i])) for i in ok])
        with torch.no_grad():
            conf, pred = self.model(x.to(self.model.device)).softmax(1).max(1)
        pred, conf = pred.cpu(), conf.cpu()
        correct = pred == torch.where(labels >= 0, labels, pred)
        for j, i in enumerate(ok):
            rows[i].update(clean_pred=int(pred[j]), clean_conf=float(conf[j]), pred=int(pred[j]), conf=float(conf[j]),
                           correct=bool(correct[j]))  # fmt: skip
            images[i] = x[j].numpy()
        sel = np.flatnonzero(correct.numpy()) if self.only_correct else np.arange(len(ok))
        if len(sel) == 0:
            return rows, images
        xs = x[sel]
        for cfg, attack in self.attacks:
            res = judged_on(self.model, cfg, attack(xs, labels[sel], keys[sel]))
            linf = (res.adversarial - xs).flatten(1).abs().max(1).values
            for j, s in enumerate(sel):
                base = rows[ok[s]]
                rows.append(
                    {
                        **base,
                        "id": f"{base['pair_id']}|{cfg.name}", "kind": "adversarial", "attack": cfg.name,
                        "method": cfg.method, "mode": cfg.mode, "eps": cfg.eps, "alpha": cfg.step_size,
                        "steps": cfg.effective_steps, "target": int(res.targets[j]), "pred": int(res.adv_pred[j]),
                        "conf": float(res.adv_conf[j]), "success": bool(res.success[j]),
                        "success_float": bool(res.success_float[j]), "linf": float(linf[j]),
                        "passes": float(res.passes[j]),
                    }
                )  # fmt: skip
                images.append(res.adversarial[j].numpy())
        return rows, images


def encode_pngs(table: pa.Table) -> pa.Table:
    """An :class:`AttackStage` ``encode=False`` table as attack rows: each row's raw 8-bit pixels
    become its ``png`` (the same bytes the stage would have encoded)."""
    if PIXELS not in table.column_names:
        return table
    raw, shapes = table.column(PIXELS).to_pylist(), table.column(PIXEL_SHAPE).to_pylist()
    png = [encode_png(np.frombuffer(b, np.uint8).reshape(s)) if s else b"" for b, s in zip(raw, shapes, strict=True)]
    table = table.drop_columns([PIXELS, PIXEL_SHAPE])
    return table.set_column(table.schema.get_field_index("png"), "png", pa.array(png, pa.binary()))
