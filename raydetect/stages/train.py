"""The training job: read descriptor rows, fit through Ray Train (or here), save the bundle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raydetect.config import DetectorConfig
from raydetect.detect.fit import FitJob, fit_local
from raydetect.detect.heads import Head
from raydetect.detect.ray_fit import fit_on_ray
from raydetect.detect.training import MIN_PAIRS, TrainingResult, train_detectors
from raydetect.errors import RaydetectError
from raydetect.store import is_remote, job_config, join, read_output


@dataclass
class Trained:
    result: TrainingResult
    bundle: str  # where the bundle was saved


def run_training(
    features_uri: str,
    out: str,
    kinds: tuple[str, ...] = ("lr",),
    cfg: DetectorConfig | None = None,
    attacks: list[str] | None = None,
    bundle_kind: str | None = None,
    use_ray: bool = True,
    n_boot: int = 1000,
    transfer: bool = True,
    progress: Callable[[str], None] | None = None,
    min_pairs: int = MIN_PAIRS,
) -> Trained:
    """Fit detectors on a feature job's output (see ``detect.training.train_detectors``) and save
    the bundle under ``<out>/detector``. ``use_ray`` fits through Ray Train (Ray must be running)."""
    table = read_output(features_uri)
    if table is None:
        raise RaydetectError(f"no feature output under {features_uri}; run the feature job first")
    fitter: Callable[[Sequence[FitJob]], list[Head]] = fit_local
    if use_ray:
        storage = None if is_remote(out) else join(out, ".ray_train")
        fitter = lambda jobs: fit_on_ray(jobs, storage)  # noqa: E731
    result = train_detectors(table, job_config(features_uri) or {}, kinds, cfg, attacks, bundle_kind, fitter, n_boot,
                             transfer, progress, min_pairs)  # fmt: skip
    return Trained(result, result.detector.save(join(out, "detector")))


def training_results(t: Trained) -> dict[str, Any]:
    """The JSON record of a training run (``results.json``)."""
    r = t.result
    return {"attacks": r.attack_rows, "detection": r.detection_rows, "transfer": r.transfer, "bundle": t.bundle,
            "bundle_metrics": r.bundle_metrics, "splits": r.splits}  # fmt: skip
