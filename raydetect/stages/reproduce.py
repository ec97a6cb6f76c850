"""The paper's experiment end to end: clean images -> attacks -> explanations -> detectors -> tables.

One pipeline, the jobs' own: the fused attack+feature job, then the training job, through Ray or
(``engine="local"``) in this process on the same stage classes. Two protocols:

* ``corrected``: iterative BIM, adversarial images quantized to 8 bits (what an auditor would
  receive) and re-checked, every image explained on its own baseline, pair-aware splits, a
  threshold chosen on clean validation images, ROC AUC with bootstrap intervals.
* ``paper``: the authors' code as it ran: a single eps-sized step ("BIM" that restarts from the
  clean image every iteration), each image explained against its twin (its adversarials are 8-bit,
  as every image an auditor receives).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from raydetect import registry
from raydetect.attacks import stable_key
from raydetect.attacks.suite import robustness_suite
from raydetect.config import (
    ATTACK_MODES,
    DETECTORS,
    AttackConfig,
    AttributionConfig,
    CalibrationMethod,
    DetectorConfig,
    FeatureConfig,
    ModelConfig,
    ResourceConfig,
    Source,
    check_choice,
    to_dict,
)
from raydetect.detect import Detector
from raydetect.detect.splits import pair_split
from raydetect.errors import RaydetectError
from raydetect.models import model_info
from raydetect.report import write_report
from raydetect.report.experiments import reproduction_report
from raydetect.report.figures import Figures
from raydetect.stages.runner import FusedJob, run_evaluation, run_job
from raydetect.stages.train import run_training
from raydetect.store import is_remote, read_output

log = logging.getLogger(__name__)

Protocol = Literal["corrected", "paper"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
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
class ReproResult:
    protocol: Protocol
    model: str
    n_images: int
    n_correct: int
    attack_rows: list[dict[str, Any]] = field(default_factory=list)
    detection_rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    transfer: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    bundle: str | None = None
    resumed: int = 0  # images an earlier run of the same job had already done
    inputs_by_status: dict[str, int] = field(default_factory=dict)  # the job's rows: ok, skipped, error (and why)
    bundle_calibration: dict[str, Any] = field(default_factory=dict)
    bundle_metrics: dict[str, Any] = field(default_factory=dict)
    robustness: list[dict[str, Any]] = field(default_factory=list)  # per attack: see detect.evaluation
    robustness_images: int = 0
    figures: Figures | None = None


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


@dataclass(frozen=True)
class Reproduction:
    """What ``raydetect reproduce`` asks for. ``data`` None: sklearn's digits, for ``digits_cnn`` only;
    ``protocols``: the corrected one, the paper's, or both (the paper's as a replication row beside it);
    ``engine`` "local" runs the same jobs in this process without Ray (development and tests);
    ``robustness`` also evaluates the corrected bundle on held-out images (Ray only)."""

    out: str
    model: ModelConfig
    data: str | None = None
    protocols: tuple[str, ...] = ("paper", "corrected")
    eps: tuple[float, ...] = (4 / 255,)
    steps: int = 10
    extra_attacks: tuple[AttackConfig, ...] = ()
    attribution: AttributionConfig = AttributionConfig()
    features: FeatureConfig = FeatureConfig()
    detectors: tuple[str, ...] = ("lr", "rf")
    calibration: CalibrationMethod = DetectorConfig.calibration
    limit: int | None = None
    offset: int = 0
    engine: str = "ray"
    robustness: Robustness | None = None
    resources: ResourceConfig = ResourceConfig()
    address: str | None = None
    sign_key: str | None = None  # Ed25519 private key file the bundles are signed with
    seed: int = 0
    bootstrap: int = 1000  # resamples for the 95% intervals

    @property
    def dataset(self) -> str:
        return "digits" if self.data is None else self.data

    def validate(self) -> Reproduction:
        if not self.protocols or any(p not in PROTOCOLS for p in self.protocols):
            raise RaydetectError(f"protocol must be corrected, paper or both; got {'/'.join(self.protocols)!r}")
        check_choice("engine", self.engine, ("ray", "local"))
        for d in self.detectors:
            check_choice("detector", d, DETECTORS)
        DetectorConfig(calibration=self.calibration).validate()
        if self.robustness is not None:
            if self.engine != "ray":
                raise RaydetectError("--adaptive runs through Ray; drop --engine local")
            if self.robustness.images < 1 or self.robustness.steps < 1:
                raise RaydetectError("--adaptive-images and --adaptive-steps must be >= 1")
        if self.bootstrap < 0:
            raise RaydetectError("bootstrap resamples must be >= 0")
        if self.data is None and self.model.name != "digits_cnn":
            raise RaydetectError("--data is required for ImageNet models: an ImageNet-style folder (<wnid>/<file>)")
        if self.dataset != "digits" and not is_remote(self.dataset) and not Path(self.dataset).expanduser().is_dir():
            raise RaydetectError(f"data folder does not exist: {self.dataset}")
        Source(self.dataset, limit=self.limit, offset=self.offset).validate()
        info = model_info(self.model.name)
        if self.dataset == "digits" and info.preprocess.channels != 1:
            raise RaydetectError(f"data 'digits' (8x8 grey) does not fit model {self.model.name}; use --model digits_cnn")
        if self.dataset != "digits" and info.num_classes != 1000:
            raise RaydetectError(f"model {self.model.name} is not an ImageNet model; use --data digits")
        for protocol in self.protocols:
            protocol_attribution(protocol, self.attribution)  # type: ignore[arg-type]  # a baseline it cannot use
        return self


def _reproduce(cfg: Reproduction, protocol: Protocol, attacks: tuple[AttackConfig, ...], signing_key: Any) -> ReproResult:
    """One protocol: the fused attack+feature job, then a fit per attack and detector (through Ray
    Train, or here with the local engine), then (``robustness``) attacks of every strength and
    adaptive ones on held-out images."""
    start = time.perf_counter()
    out, model_cfg = Path(cfg.out), cfg.model
    feats = str(out / protocol / "features")
    source = Source(cfg.dataset, limit=cfg.limit, offset=cfg.offset)
    job = FusedJob(feats, model_cfg, source, attacks, protocol_attribution(protocol, cfg.attribution), cfg.features)
    here = cfg.engine == "local"
    summary = run_job(job, cfg.resources, cfg.address, here=here)
    trained = run_training(
        feats,
        str(out / protocol),
        kinds=cfg.detectors,
        cfg=DetectorConfig(seed=cfg.seed, calibration=cfg.calibration),
        use_ray=not here,
        n_boot=cfg.bootstrap,
        progress=log.info,
        figures=True,
        signing_key=signing_key,
    )
    rep = trained.result
    n_correct = rep.attack_rows[0]["n_correct"] if rep.attack_rows else 0
    result = ReproResult(protocol, model_cfg.name, summary.inputs, n_correct, rep.attack_rows, rep.detection_rows)
    result.transfer, result.bundle = rep.transfer, trained.bundle
    result.resumed, result.figures = summary.skipped_done, trained.figures
    result.inputs_by_status = summary.rows_by_status
    result.bundle_calibration, result.bundle_metrics = rep.detector.calibration, rep.bundle_metrics
    robustness = cfg.robustness
    if robustness is not None and protocol == "corrected":
        ids = held_out_ids(feats, cfg.seed)[: robustness.images]
        suite = tuple(a for e in sorted({a.eps for a in attacks}) for a in robustness.suite(e, model_cfg.name))
        log.info("robustness: %d attacks on %d held-out images", len(suite), len(ids))
        where = str(out / protocol / "robustness")
        _, result.robustness = run_evaluation(
            Source(cfg.dataset), where, trained.bundle, suite, cfg.resources, set(ids), cfg.address, model_cfg.device
        )
        result.robustness_images = len(ids)
        add_metrics(rep.detector, trained.bundle, {"robustness": result.robustness}, signing_key)
    result.seconds = time.perf_counter() - start
    return result


def reproduce(cfg: Reproduction) -> list[ReproResult]:
    """Run each protocol (through Ray, or in this process); its features, bundle and figures' data
    under ``<out>/<protocol>``."""
    cfg = cfg.validate()
    signing_key = None
    if cfg.sign_key is not None:
        from raydetect.detect.signing import load_private_key  # cryptography: only where a key is given

        signing_key = load_private_key(cfg.sign_key)  # fail before hours of work, not after
    results: list[ReproResult] = []
    for protocol in cfg.protocols:
        attacks = protocol_plan(protocol, list(cfg.eps), cfg.steps, cfg.seed, cfg.extra_attacks)  # type: ignore[arg-type]
        log.info("protocol %s: %d attacks (%s engine)", protocol, len(attacks), cfg.engine)
        results.append(_reproduce(cfg, protocol, attacks, signing_key))  # type: ignore[arg-type]
    return results


def run_reproduction(cfg: Reproduction) -> Path:
    """:func:`reproduce`, then ``report.md`` and ``results.json`` under ``out``; returns the report's path."""
    results = reproduce(cfg)
    report = write_report(
        cfg.out,
        reproduction_report(results, cfg.attribution, cfg.features),
        {
            "engine": cfg.engine,
            "model": to_dict(cfg.model),
            "attribution": to_dict(cfg.attribution),
            "features": to_dict(cfg.features),
            "data": cfg.dataset,
            "limit": cfg.limit,
            "offset": cfg.offset,
            "results": [
                {
                    "protocol": r.protocol,
                    "n_images": r.n_images,
                    "n_correct": r.n_correct,
                    "seconds": r.seconds,
                    "resumed": r.resumed,
                    "inputs_by_status": r.inputs_by_status,
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
