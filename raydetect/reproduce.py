"""Single-process reproduction: clean images -> attacks -> explanations -> detectors -> tables.

This is the paper's experiment end to end on one machine, without Ray. Two protocols:

* ``corrected``: iterative BIM, adversarial images quantized to 8 bits (what an auditor would
  receive) and re-checked, every image explained on its own baseline, pair-aware splits, a
  threshold chosen on clean validation images, ROC AUC with bootstrap intervals.
* ``paper``: the authors' code as it ran: a single eps-sized step ("BIM" that restarts from the
  clean image every iteration), float adversarials, and each image explained against its twin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from raydetect import registry
from raydetect.attacks import AttackResult, make_attack, stable_key
from raydetect.attacks.suite import robustness_suite
from raydetect.config import (
    ATTACK_MODES,
    AttackConfig,
    AttributionConfig,
    CalibrationMethod,
    DetectorConfig,
    FeatureConfig,
    ModelConfig,
    ResourceConfig,
    Source,
    to_dict,
)
from raydetect.detect import Detector
from raydetect.detect.features import Featurizer
from raydetect.detect.fit import fit_and_evaluate
from raydetect.detect.splits import pair_split
from raydetect.detect.training import MIN_PAIRS, calibration_fields
from raydetect.errors import RaydetectError
from raydetect.explain import Explainer, feature_names
from raydetect.images import LocalImages, batches, load_digits_images, load_image_folder
from raydetect.models import ImageClassifier, load_model
from raydetect.report import write_report
from raydetect.report.experiments import reproduction_report
from raydetect.report.figures import PAIRS, Figures, attribution_values, explain_pairs, round_robin
from raydetect.stages.runner import FusedJob, run_evaluation, run_job
from raydetect.stages.train import run_training
from raydetect.store import read_output

log = logging.getLogger(__name__)

Protocol = Literal["corrected", "paper"]
PAPER_EPS = 0.1


def protocol_attacks(protocol: Protocol, eps: float, steps: int = 10, seed: int = 0) -> tuple[AttackConfig, ...]:
    """The three attack modes of the paper under one protocol."""
    method = registry.PAPER_ATTACK if protocol == "paper" else registry.DEFAULT_ATTACK
    return tuple(AttackConfig(method=method, mode=m, eps=eps, steps=steps, seed=seed) for m in ATTACK_MODES)


def protocol_attribution(protocol: Protocol, base: AttributionConfig) -> AttributionConfig:
    """The paper explained each image against its twin; the corrected protocol never does."""
    if protocol == "paper":
        return replace(base, baseline="pair", explainer="ig", views=(), jitter=0.0)
    if base.baseline == "pair":
        raise RaydetectError("baseline 'pair' is the paper's leak; the corrected protocol cannot use it")
    if base.baseline == "train":
        raise RaydetectError(
            "baseline 'train' draws GradientShap references from attacked clean images: run `raydetect attack`, then "
            "`raydetect features` (reproduce cannot)"
        )
    return base


@dataclass
class PairFeatures:
    """Descriptor rows for one attack: clean and adversarial twins share a pair id.

    Corrected protocol: a clean row for every correctly classified image (thresholds and FPR are
    measured on all of them, as in ``detect.dataset.FeatureSet``) and an adversarial row for each
    successful attack. Paper protocol: clean rows only beside a successful twin.
    """

    attack: AttackConfig
    X: np.ndarray  # (C + P, D): C clean rows, then P adversarial rows
    y: np.ndarray  # (C + P,) 0 clean, 1 adversarial
    pairs: np.ndarray  # (C + P,) index of the clean image
    pred: np.ndarray  # (C + P,) model prediction explained


@dataclass
class ReproResult:
    protocol: Protocol
    model: str
    n_images: int
    n_correct: int
    attack_rows: list[dict[str, Any]] = field(default_factory=list)
    detection_rows: list[dict[str, Any]] = field(default_factory=list)
    features: list[PairFeatures] = field(default_factory=list)
    seconds: float = 0.0
    transfer: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    bundle: str | None = None
    resumed: int = 0  # images an earlier run of the same job had already done
    bundle_calibration: dict[str, Any] = field(default_factory=dict)
    bundle_metrics: dict[str, Any] = field(default_factory=dict)
    robustness: list[dict[str, Any]] = field(default_factory=list)  # per attack: see detect.evaluation
    robustness_images: int = 0
    figures: Figures | None = None


Progress = Callable[[str, int, int], None]


class ThrottledProgress:
    """Logs a stage's progress at most every ``interval`` seconds, and always at its end."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}
        self.started: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start = self.started.setdefault(stage, now)
        if done >= total or now - self.last.get(stage, start) >= self.interval:
            self.last[stage] = now
            rate = done / max(now - start, 1e-9)
            log.info("%s: %d/%d images (%.1f img/s)", stage, done, total, rate)


def run_attack(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    batch_size: int,
    progress: Progress,
    quantize: bool = True,
) -> AttackResult:
    """Attack every image in batches; concatenate the per-batch results."""
    attack = make_attack(model, cfg, quantize)
    parts: list[AttackResult] = []
    for sl in batches(len(images), batch_size):
        parts.append(attack(images[sl], labels[sl], keys=np.arange(sl.start, sl.stop)))
        progress(f"attack {cfg.name}", sl.stop, len(images))
    return AttackResult(**{f: torch.cat([getattr(p, f) for p in parts]) for f in AttackResult.__dataclass_fields__})


def explain_all(
    featurizer: Featurizer,
    images: torch.Tensor,
    batch_size: int,
    progress: Progress,
    stage: str,
    keys: np.ndarray,
    twins: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors (N, D) and explained classes (N,) for images, batch by batch."""
    feats, preds = [], []
    for sl in batches(len(images), batch_size):
        f = featurizer(images[sl], keys=keys[sl], twins=None if twins is None else twins[sl])
        feats.append(f.features.cpu().numpy())
        preds.append(f.targets.cpu().numpy())
        progress(stage, sl.stop, len(images))
    return np.concatenate(feats), np.concatenate(preds)


def reproduce_local(
    images: LocalImages,
    model_cfg: ModelConfig,
    attacks: tuple[AttackConfig, ...],
    attribution: AttributionConfig,
    features: FeatureConfig,
    detectors: tuple[str, ...] = ("lr", "rf"),
    protocol: Protocol = "corrected",
    batch_size: int = 16,
    seed: int = 0,
    model: ImageClassifier | None = None,
    progress: Progress | None = None,
    n_boot: int = 1000,
) -> ReproResult:
    """Run the whole experiment in this process and return Table 1 and Table 2 rows."""
    start = time.perf_counter()
    progress = progress or ThrottledProgress()
    attribution = protocol_attribution(protocol, attribution)
    model = model or load_model(model_cfg)
    x_all = torch.from_numpy(images.images)
    y_all = torch.from_numpy(images.labels)
    if (y_all < 0).any():
        raise RaydetectError("the reproduction needs labelled images (ImageNet folder layout or digits)")

    with torch.no_grad():
        preds = torch.cat([model(x_all[sl].to(model.device)).argmax(1).cpu() for sl in batches(len(x_all), batch_size)])
    correct = (preds == y_all).numpy()
    idx = np.flatnonzero(correct)
    if len(idx) < 4:
        raise RaydetectError(f"only {len(idx)} images are classified correctly; need at least 4 to attack and split")
    x, y = x_all[idx], y_all[idx]
    result = ReproResult(protocol, model_cfg.name, len(x_all), len(idx))
    if features.needs_references:
        raise RaydetectError("LID and Mahalanobis draw references from attacked clean images: run `raydetect attack`, "
                             "then `raydetect features` (reproduce cannot)")  # fmt: skip
    featurizer = Featurizer(model, attribution, features)

    figures = Figures()
    examples: dict[str, list[tuple[int, torch.Tensor]]] = {}  # attack -> (index into x, adversarial) for Figure 1
    clean_feats: tuple[np.ndarray, np.ndarray] | None = None
    if attribution.baseline != "pair":
        # Clean explanations do not depend on the attack: compute them once.
        clean_feats = explain_all(featurizer, x, batch_size, progress, "explain clean", idx)

    for cfg in attacks:
        # The corrected protocol judges the 8-bit image an auditor receives; the paper's, the float one.
        res = run_attack(model, x, y, cfg, batch_size, progress, quantize=protocol == "corrected")
        adv = res.adversarial
        ok = np.flatnonzero(res.success.numpy())
        result.attack_rows.append(
            {
                "attack": cfg.name,
                "method": cfg.method,
                "mode": cfg.mode,
                "eps": cfg.eps,
                "steps": cfg.effective_steps,
                "alpha": cfg.step_size,
                "n_correct": len(idx),
                "n_success": len(ok),
                "success_rate": len(ok) / len(idx),
                "max_linf": float((adv - x).abs().max()),
            }
        )
        examples[cfg.name] = [(int(i), adv[i]) for i in ok[: PAIRS * len(attacks)]]
        if len(ok) < MIN_PAIRS:
            log.warning("attack %s succeeded on %d images only (< %d); no detector of its own", cfg.name, len(ok), MIN_PAIRS)
            continue
        if clean_feats is None:  # paper protocol: explain against the twin
            cf, cp = explain_all(featurizer, x[ok], batch_size, progress, f"explain clean ({cfg.name})", idx[ok], twins=adv[ok])
            clean_ids = idx[ok]
        else:  # every correctly classified image, also where this attack failed
            (cf, cp), clean_ids = clean_feats, idx
        af, ap = explain_all(featurizer, adv[ok], batch_size, progress, f"explain {cfg.name}", idx[ok], twins=x[ok])
        pf = PairFeatures(
            attack=cfg,
            X=np.concatenate([cf, af]),
            y=np.concatenate([np.zeros(len(clean_ids), np.int64), np.ones(len(ok), np.int64)]),
            pairs=np.concatenate([clean_ids, idx[ok]]),
            pred=np.concatenate([cp, ap]),
        )
        result.features.append(pf)
        values = attribution_values(pf.X, feature_names(features, attribution))
        if values is not None:
            figures.distributions[cfg.name] = (values[0][pf.y == 0].ravel(), values[0][pf.y == 1].ravel())
            figures.values = values[1]
        for kind in detectors:
            fit = fit_and_evaluate(pf.X, pf.y, pf.pairs, DetectorConfig(kind=kind, seed=seed), n_boot=n_boot)  # type: ignore[arg-type]
            result.detection_rows.append(
                {"attack": cfg.name, "mode": cfg.mode, "eps": cfg.eps, "detector": kind, **fit.evaluation.to_dict(),
                 **calibration_fields(fit.calibration)}
            )  # fmt: skip
            figures.roc.setdefault(cfg.name, {})[kind] = (fit.test_labels, fit.test_scores)
    if not figures.distributions:
        figures.notes.append("Figure 2 needs quantile descriptors (signed_quantiles, abs_quantiles or channel_quantiles).")
    # Figure 1: a few pairs, one attack after another, explained again for their maps.
    shown = round_robin(examples, PAIRS, key=lambda e: e[0])
    if shown:
        pick = np.array([i for _, (i, _) in shown])
        adv_shown = torch.stack([a for _, (_, a) in shown]).numpy()
        names = [Path(images.ids[i]).name for i in idx[pick]]
        explainer = featurizer.explainer or Explainer(model, attribution)  # figures show maps even for peers
        figures.pairs = explain_pairs(explainer, [a for a, _ in shown], x[pick].numpy(), adv_shown, idx[pick], idx[pick], names)
    result.figures = figures
    result.seconds = time.perf_counter() - start
    return result


def load_local_data(data: str, model: ImageClassifier, limit: int | None, offset: int = 0) -> LocalImages:
    """'digits' for sklearn's test digits, else an ImageNet-style folder."""
    if data == "digits":
        if model.channels != 1 or model.input_size != 8:
            raise RaydetectError(f"data 'digits' (8x8 grey) does not fit model {model.name}; use --model digits_cnn")
        return load_digits_images("test", limit, offset)
    if model.num_classes != 1000:
        raise RaydetectError(f"model {model.name} is not an ImageNet model; use --data digits")
    return load_image_folder(data, model.info.preprocess, limit, offset)


@dataclass(frozen=True)
class Robustness:
    """How ``reproduce --adaptive`` evaluates the bundle (see ``attacks.suite.robustness_suite``)."""

    images: int = 32
    steps: int = 100
    restarts: int = 1
    eot: int = 1
    smooth: float = 10.0

    def suite(self, eps: float, model: str) -> tuple[AttackConfig, ...]:
        return robustness_suite(eps, model, adaptive_steps=self.steps, restarts=self.restarts, eot=self.eot, smooth=self.smooth)


def held_out_ids(features_uri: str, seed: int) -> list[str]:
    """Correctly classified images on the test side of the bundle's pair split, in a fixed random order."""
    table = read_output(features_uri, columns=["id", "kind", "status", "correct"])
    ids = np.array([r["id"] for r in table.to_pylist() if r["kind"] == "clean" and r["status"] == "ok" and r["correct"]])
    _, test = pair_split(ids, DetectorConfig().test_fraction, seed)
    return sorted(ids[test].tolist(), key=stable_key)


def add_metrics(det: Detector, bundle: str, metrics: dict[str, Any], signing_key: Any = None) -> None:
    """Record more measured figures in the bundle ``det`` was saved as (rewrites its manifest and
    checksums, and signs again with ``signing_key``: a bundle signed once stays signed)."""
    det.metrics = {**det.metrics, **metrics}
    det.save(bundle, signing_key)


def protocol_plan(
    protocol: Protocol, eps: list[float], steps: int, seed: int, extra: tuple[AttackConfig, ...] = ()
) -> tuple[AttackConfig, ...]:
    """The paper's one attack setting, or BIM in three modes at each eps plus ``extra`` (the corrected protocol)."""
    if protocol == "paper":
        return protocol_attacks("paper", PAPER_EPS, seed=seed)
    attacks: tuple[AttackConfig, ...] = ()
    for e in eps:
        attacks += protocol_attacks("corrected", e, steps, seed)
    return attacks + extra


def _reproduce_ray(
    data: str,
    out: Path,
    model_cfg: ModelConfig,
    protocol: Protocol,
    attacks: tuple[AttackConfig, ...],
    attribution: AttributionConfig,
    features: FeatureConfig,
    detectors: tuple[str, ...],
    limit: int | None,
    resources: ResourceConfig,
    seed: int,
    address: str | None,
    robustness: Robustness | None = None,
    signing_key: Any = None,
    offset: int = 0,
    calibration: CalibrationMethod = DetectorConfig.calibration,
) -> ReproResult:
    """One protocol through Ray: the fused attack+feature job, then Ray Train per attack and detector,
    then (``robustness``) attacks of every strength and adaptive ones on held-out images."""
    start = time.perf_counter()
    feats = str(out / protocol / "features")
    source = Source(data, limit=limit, offset=offset)
    job = FusedJob(feats, model_cfg, source, attacks, protocol_attribution(protocol, attribution), features)
    summary = run_job(job, resources, address)
    trained = run_training(
        feats,
        str(out / protocol),
        kinds=detectors,
        cfg=DetectorConfig(seed=seed, calibration=calibration),
        progress=log.info,
        figures=True,
        signing_key=signing_key,
    )
    rep = trained.result
    n_correct = rep.attack_rows[0]["n_correct"] if rep.attack_rows else 0
    result = ReproResult(protocol, model_cfg.name, summary.inputs, n_correct, rep.attack_rows, rep.detection_rows)
    result.transfer, result.bundle = rep.transfer, trained.bundle
    result.resumed, result.figures = summary.skipped_done, trained.figures
    result.bundle_calibration, result.bundle_metrics = rep.detector.calibration, rep.bundle_metrics
    if robustness is not None and protocol == "corrected":
        ids = held_out_ids(feats, seed)[: robustness.images]
        suite = tuple(a for e in sorted({a.eps for a in attacks}) for a in robustness.suite(e, model_cfg.name))
        log.info("robustness: %d attacks on %d held-out images", len(suite), len(ids))
        where = str(out / protocol / "robustness")
        _, result.robustness = run_evaluation(
            Source(data), where, trained.bundle, suite, resources, set(ids), address, model_cfg.device
        )
        result.robustness_images = len(ids)
        add_metrics(rep.detector, trained.bundle, {"robustness": result.robustness}, signing_key)
    result.seconds = time.perf_counter() - start
    return result


def run_reproduction(
    data: str,
    out: Path,
    model_cfg: ModelConfig,
    protocols: tuple[Protocol, ...],
    eps: list[float],
    steps: int,
    attribution: AttributionConfig,
    features: FeatureConfig,
    detectors: tuple[str, ...],
    limit: int | None,
    batch_size: int | None,
    seed: int,
    engine: str = "ray",
    resources: ResourceConfig | None = None,
    address: str | None = None,
    robustness: Robustness | None = None,
    signing_key: Any = None,
    offset: int = 0,
    extra_attacks: tuple[AttackConfig, ...] = (),
    calibration: CalibrationMethod = DetectorConfig.calibration,
) -> Path:
    """Run each protocol (through Ray, or in this process), write ``report.md`` and ``results.json``.

    ``signing_key`` signs the bundles the Ray engine writes (the local engine writes none); ``calibration``
    chooses how their thresholds are set (``DetectorConfig.calibration``)."""
    if signing_key is not None and engine == "local":
        raise RaydetectError("--sign-key signs the Ray engine's bundles; the local engine writes none")
    for protocol in protocols:
        protocol_attribution(protocol, attribution)  # refuse a baseline the protocol cannot use before any work
    results: list[ReproResult] = []
    skipped: dict[str, str] = {}
    if engine == "local":
        model = load_model(model_cfg)
        images = load_local_data(data, model, limit, offset)
        skipped = images.errors
        for path, reason in skipped.items():
            log.warning("skipped %s: %s", path, reason)
        for protocol in protocols:
            attacks = protocol_plan(protocol, eps, steps, seed, extra_attacks)
            log.info("protocol %s: %d attacks on %d images", protocol, len(attacks), len(images.ids))
            results.append(
                reproduce_local(
                    images, model_cfg, attacks, attribution, features, detectors, protocol, batch_size or 16, seed, model=model
                )
            )
    else:
        res = resources or ResourceConfig(batch_size=batch_size)
        for protocol in protocols:
            attacks = protocol_plan(protocol, eps, steps, seed, extra_attacks)
            log.info("protocol %s: %d attacks through Ray", protocol, len(attacks))
            results.append(
                _reproduce_ray(
                    data,
                    out,
                    model_cfg,
                    protocol,
                    attacks,
                    attribution,
                    features,
                    detectors,
                    limit,
                    res,
                    seed,
                    address,
                    robustness,
                    signing_key,
                    offset,
                    calibration,
                )
            )
    report = write_report(
        str(out),
        reproduction_report(results, attribution, features),
        {
            "engine": engine,
            "model": to_dict(model_cfg),
            "attribution": to_dict(attribution),
            "features": to_dict(features),
            "data": data,
            "limit": limit,
            "offset": offset,
            "skipped": skipped,
            "results": [
                {
                    "protocol": r.protocol,
                    "n_images": r.n_images,
                    "n_correct": r.n_correct,
                    "seconds": r.seconds,
                    "resumed": r.resumed,
                    "attacks": r.attack_rows,
                    "detection": r.detection_rows,
                    "transfer": r.transfer,
                    "bundle": r.bundle,
                    "bundle_calibration": r.bundle_calibration,
                    "bundle_metrics": r.bundle_metrics,
                    "robustness": r.robustness,
                    "robustness_images": r.robustness_images,
                }
                for r in results
            ],
        },
    )
    return Path(report)
