"""The one job runner: plan the actors, skip what is done, stream rows to the sink, account.

A job says where its inputs come from, which actor maps them and what decides its rows; the
runner does the rest the same way for every job (attack, features, attack+features, audit):

    plan resources -> record the config (refusing a mismatched resume) -> read inputs not yet
    done -> map them on an actor pool -> write atomic Parquet parts -> count every input once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source, to_dict
from raydetect.detect import Detector
from raydetect.detect.bundle import load_for_audit
from raydetect.detect.evaluation import robustness_rows
from raydetect.errors import RaydetectError
from raydetect.explain.views import key_fingerprint, secret
from raydetect.models import ConfiguredLoader, load_model, model_info
from raydetect.models.runtime import actor_runtime_env
from raydetect.report import write_report
from raydetect.report.audit import audit_report
from raydetect.stages.attack import AttackStage, encode_pngs
from raydetect.stages.audit import AuditStage
from raydetect.stages.console import Progress
from raydetect.stages.evaluate import EvaluateStage, detector_labels
from raydetect.stages.explain import FeatureStage
from raydetect.stages.external import ExternalImages, read_external
from raydetect.stages.fused import AttackFeatureStage
from raydetect.stages.plan import HEAD, Plan, init_ray, map_actors, plan_resources
from raydetect.stages.read import DatasetSource, read_dataset, read_here, read_inputs
from raydetect.stages.references import (
    MarkReferences,
    choose_references,
    load_references,
    reference_budget,
    save_references,
)
from raydetect.stages.sink import WriteParts
from raydetect.store import (
    SUMMARY_FILE,
    claim_output,
    count_distinct,
    count_rows,
    done_ids,
    join,
    make_dir,
    open_filesystem,
    output_files,
    read_output,
    scan_output,
    write_json,
)

log = logging.getLogger(__name__)
ROWS_PER_FEATURE_BLOCK = 64  # rows of attack output per feature task (see FeatureJob.map)


@dataclass
class JobSummary:
    """Accounting of one job run: every input row is in ``rows_by_status`` exactly once."""

    job: str
    output: str
    inputs: int
    skipped_done: int
    rows_written: int
    rows_total: int
    rows_by_status: dict[str, int]
    duplicate_ids: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Job:
    """What differs between jobs. ``out`` holds the rows; ``resume_key`` is the column whose
    values mark an input as done."""

    name: str
    resume_key = "pair_id"
    # What the progress line counts: "clean" counts clean images (however many adversarial twins
    # follow them), any other value counts distinct values of that column.
    progress_key = "clean"
    unit = "images"

    def __init__(self, out: str, model: ModelConfig) -> None:
        self.out = out
        self.model = model
        self.pending: int | None = None  # inputs this run will process, once ``read`` knows

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, model: ModelConfig, done: set[str]) -> Any:
        """The input dataset without the inputs already done; None when nothing is left."""
        raise NotImplementedError

    def read_here(self, model: ModelConfig, done: set[str], batch_size: int) -> Iterator[dict[str, np.ndarray]] | None:
        """:meth:`read` in this process, as numpy batches (``run_job(..., here=True)``)."""
        raise RaydetectError(f"the {self.name} job runs through Ray only")

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        """The stage class that maps the inputs, and its constructor's arguments."""
        raise NotImplementedError

    def map(self, ds: Any, model: ModelConfig, plan: Plan) -> Any:
        return map_actors(ds, *self.stage(model, plan), plan)

    def inputs(self) -> int:
        """Inputs accounted for in the output once the job has run."""
        return count_distinct(self.out, self.resume_key)


def run_job(job: Job, resources: ResourceConfig = ResourceConfig(), address: str | None = None, here: bool = False) -> JobSummary:
    """Run ``job`` on the Ray cluster at ``address`` (or a local one); ``here``: in this process without
    Ray, one stage instance on this machine's CPUs (or its GPUs), the same rows, parts and resume
    (development and tests)."""
    start = time.perf_counter()
    job.model.validate(ray=not here)
    if here:
        plan = plan_resources(resources, [this_machine()], device=job.model.device)
    else:
        init_ray(address)
        plan = plan_resources(resources, device=job.model.device)
    model = plan.model_config(job.model)
    # The config records the device the job asked for (what a bundle trained on these rows inherits
    # nothing of); the plan records where it ran.
    config = {**job.config(job.model, plan), "plan": asdict(plan)}
    claim_output(job.out, config)
    done = done_ids(job.out, job.resume_key)
    ds = job.read_here(model, done, plan.batch_size) if here else job.read(model, done)
    written = 0
    if ds is None:
        log.info("%s job: all %d inputs already done in %s", job.name, len(done), job.out)
    else:
        log.info("%s job: %d actors x %d threads on %s, batch %d; %d inputs already done", job.name, plan.num_actors,
                 plan.threads, plan.device, plan.batch_size, len(done))  # fmt: skip
        t_write = time.perf_counter()
        written = _write_here(job, ds, model, plan) if here else _write(job, job.map(ds, model, plan))
        log.debug("%s job: %.2f s to plan and read the resume state, %.2f s to run", job.name, t_write - start,
                  time.perf_counter() - t_write)  # fmt: skip
    t_sum = time.perf_counter()
    summary = _summarize(job, start, len(done), written, config)
    log.debug("%s job: %.2f s to account", job.name, time.perf_counter() - t_sum)
    return summary


def _write(job: Job, ds: Any) -> int:
    """Write every block as a part, streaming the parts' counts back to one progress line."""
    make_dir(job.out)
    counts = ds.map_batches(WriteParts(job.out, job.progress_key), batch_size=None, batch_format="pyarrow")
    progress = Progress(job.name, job.pending, job.unit)
    written = 0
    try:
        for batch in counts.iter_batches(batch_size=None, batch_format="numpy"):
            written += int(batch["rows"].sum())
            progress.update(int(batch["inputs"].sum()))
    finally:
        progress.close()
    if log.isEnabledFor(logging.DEBUG):  # where a job's time went, per operator (bench/audit.py --stats)
        log.debug("%s job, Ray Data stats:\n%s", job.name, counts.stats())
    return written


def this_machine() -> dict[str, float]:
    """This machine as a one-node cluster's resources (what ``plan_resources`` sizes a plan to)."""
    import os

    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count()), HEAD: 1.0}


def _write_here(job: Job, batches: Iterator[dict[str, np.ndarray]], model: ModelConfig, plan: Plan) -> int:
    """:func:`_write` in this process: one instance of the job's stage maps each batch."""
    make_dir(job.out)
    cls, args = job.stage(model, plan)
    stage, sink = cls(*args), WriteParts(job.out, job.progress_key)
    progress = Progress(job.name, job.pending, job.unit)
    written = 0
    try:
        for batch in batches:
            counts = sink(stage(batch))  # every stage returns a pyarrow table
            written += sum(counts["rows"])
            progress.update(sum(counts["inputs"]))
    finally:
        progress.close()
    return written


def _summarize(job: Job, start: float, skipped: int, written: int, config: dict[str, Any]) -> JobSummary:
    by_status: dict[str, int] = {}
    for table in scan_output(job.out, columns=["id", "status"]):  # bounded memory at any size
        for c in table.group_by("status").aggregate([("id", "count")]).to_pylist():
            by_status[c["status"]] = by_status.get(c["status"], 0) + c["id_count"]
    rows_total = sum(by_status.values())
    summary = JobSummary(
        job=job.name, output=job.out, inputs=job.inputs(), skipped_done=skipped, rows_written=written,
        rows_total=rows_total, rows_by_status=by_status, duplicate_ids=count_rows(job.out) - rows_total,
        seconds=time.perf_counter() - start, config=config,
    )  # fmt: skip
    write_json(join(job.out, SUMMARY_FILE), summary.to_dict())
    return summary


# --------------------------------------------------------------------------------------------
# The jobs


class _FromSource(Job):
    """Jobs that read images from a source; an image is done once its clean row is written."""

    def __init__(self, out: str, model: ModelConfig, source: Source | DatasetSource) -> None:
        super().__init__(out, model)
        self.source = source

    def source_config(self) -> dict[str, Any]:
        return self.source.describe() if isinstance(self.source, DatasetSource) else asdict(self.source)

    def read(self, model: ModelConfig, done: set[str]) -> Any:
        pre = model_info(model.name).preprocess
        if isinstance(self.source, DatasetSource):
            return read_dataset(self.source, pre, skip_ids=done)
        ds, self.pending = read_inputs(self.source, pre, skip_ids=done, decode=not self.decode_in_actor(model))
        return ds

    def read_here(self, model: ModelConfig, done: set[str], batch_size: int) -> Iterator[dict[str, np.ndarray]] | None:
        if isinstance(self.source, DatasetSource):
            raise RaydetectError("a Ray Dataset is read through Ray only")
        batches, self.pending = read_here(self.source, model_info(model.name).preprocess, batch_size, skip_ids=done)
        return batches if self.pending != 0 else None

    def decode_in_actor(self, model: ModelConfig) -> bool:
        """Whether the model actor decodes the images (``read.decode_rows``): on CPUs, where read
        tasks would decode beside the actor's threads on the same cores; a GPU actor leaves decoding
        to the read tasks so its GPU does not wait on it."""
        return self.decodes and model.device == "cpu"

    decodes = False  # the job's stage calls read.decode_rows


class AttackJob(_FromSource):
    """Attack every image; attacks that know the detector need ``detector`` (loaded from ``bundle``)."""

    name = "attack"

    def __init__(self, out: str, model: ModelConfig, source: Source, attacks: Sequence[AttackConfig], only_correct: bool = True,
                 detector: Detector | None = None, bundle: str | None = None) -> None:  # fmt: skip
        if not attacks:
            raise RaydetectError("no attack configured")
        needs = [a.name for a in attacks if a.adaptive]
        if needs and detector is None:
            raise RaydetectError(f"{', '.join(needs)} attack(s) the detector itself: pass --detector BUNDLE")
        super().__init__(out, model, source)
        self.attacks, self.only_correct, self.detector, self.bundle = tuple(attacks), only_correct, detector, bundle

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        out = {"source": self.source_config(), "model": to_dict(model), "attacks": [to_dict(a) for a in self.attacks]}
        return {**out, "bundle": self.bundle} if self.bundle else out

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        return AttackStage, self._stage_args(model, plan, encode=True)

    def map(self, ds: Any, model: ModelConfig, plan: Plan) -> Any:
        # The model actor ships raw pixels; PNG encoding (PIL, per image) runs in CPU tasks after it,
        # so an actor holding a GPU and one CPU does not wait on it.
        actors = map_actors(ds, AttackStage, self._stage_args(model, plan, encode=False), plan)
        return actors.map_batches(encode_pngs, batch_size=None, batch_format="pyarrow")

    def _stage_args(self, model: ModelConfig, plan: Plan, encode: bool) -> tuple[Any, ...]:
        return ConfiguredLoader(model), self.attacks, self.only_correct, plan.threads, self.detector, encode


class FusedJob(AttackJob):
    """Attack and explain in one pass; the fast path for a full run (no intermediate output)."""

    name = "attack+features"

    def __init__(self, out: str, model: ModelConfig, source: Source, attacks: Sequence[AttackConfig],
                 attribution: AttributionConfig, features: FeatureConfig, only_correct: bool = True,
                 keep_png: bool = False) -> None:  # fmt: skip
        if reference_budget(attribution, features):
            raise RaydetectError(
                "baseline 'train', LID and Mahalanobis draw references from attacked clean images: run `raydetect attack`, "
                "then `raydetect features` (the fused job and reproduce cannot)"
            )
        super().__init__(out, model, source, attacks, only_correct)
        self.attribution, self.features, self.keep_png = attribution, features, keep_png

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        return {**super().config(model, plan), "attribution": to_dict(self.attribution), "features": to_dict(self.features)}

    map = Job.map  # the fused stage writes feature rows (PNG, if kept, in its own actor)

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        return AttackFeatureStage, (ConfiguredLoader(model), self.attacks, self.attribution, self.features,
                                    self.only_correct, plan.threads, plan.batch_size, self.keep_png, secret())  # fmt: skip


class FeatureJob(Job):
    """Explain every row an attack job wrote.

    With GradientShap's ``train`` baseline and no ``references`` given, the references are a
    seeded sample of the attack output's clean images (``stages.references``), whose rows are
    written as skipped. Either way the references are saved beside the features for the bundle.
    """

    name = "features"

    def __init__(self, out: str, model: ModelConfig, attacks_dir: str, attribution: AttributionConfig, features: FeatureConfig,
                 references: np.ndarray | None = None, maps_fraction: float = 0.0) -> None:  # fmt: skip
        super().__init__(out, model)
        self.files = output_files(attacks_dir)
        if not self.files:
            raise RaydetectError(f"no attack output under {attacks_dir}; run the attack job first")
        self.attacks_dir, self.attribution, self.features = attacks_dir, attribution, features
        self.references, self.maps_fraction = references, maps_fraction
        self.reference_ids: list[str] = []
        budget = reference_budget(attribution, features)
        if budget and references is None:
            saved = load_references(out)  # a resumed job keeps the references its rows were explained against
            self.reference_ids, self.references = saved or choose_references(attacks_dir, attribution.seed, *budget)
        # The paper protocol's output ids are per (pair, attack): resume whole pairs.
        self.resume_key = self.progress_key = "pair_id" if attribution.baseline == "pair" else "id"
        self.unit = "pairs" if attribution.baseline == "pair" else "images"

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        refs = {} if self.references is None else {"references": {"images": len(self.references), "ids": self.reference_ids}}
        return {"attacks_dir": self.attacks_dir, "model": to_dict(model), "attribution": to_dict(self.attribution),
                "features": to_dict(self.features), **refs}  # fmt: skip

    def read(self, model: ModelConfig, done: set[str]) -> Any:
        if self.references is not None:
            save_references(self.out, self.reference_ids, self.references)
        keys = read_output(self.attacks_dir, columns=[self.resume_key]).column(self.resume_key).to_pylist()
        self.pending = len(set(keys) - done)
        ds = ray.data.read_parquet(self.files, filesystem=open_filesystem(self.attacks_dir)[0])
        if self.reference_ids:
            ds = ds.map_batches(MarkReferences(self.reference_ids), batch_format="pyarrow")
        if done:
            ds = ds.map_batches(_DropDone(ray.put(done), self.resume_key), batch_format="pyarrow")
        return ds

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        return FeatureStage, (ConfiguredLoader(model), self.attribution, self.features, self.references,
                              self.maps_fraction, plan.threads, plan.batch_size, secret())  # fmt: skip

    def map(self, ds: Any, model: ModelConfig, plan: Plan) -> Any:
        if self.attribution.baseline != "pair":
            # An attack output's part is one block of thousands of rows: one actor's task, and no progress
            # or written part until it ends. Blocks of a few batches spread over the pool and report often.
            ds = ds.repartition(target_num_rows_per_block=ROWS_PER_FEATURE_BLOCK)
            return super().map(ds, model, plan)
        cls, args = self.stage(model, plan)
        # The paper's protocol needs each clean image beside its twins: one group per pair.
        return ds.groupby("pair_id").map_groups(
            cls, fn_constructor_args=args, batch_format="numpy", num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            compute=plan.compute(), runtime_env=actor_runtime_env(plan.pass_memory_mb),
        )  # fmt: skip

    def inputs(self) -> int:
        return count_distinct(self.attacks_dir, "id")


class ExternalFeatureJob(FeatureJob):
    """Explain adversarial images made elsewhere beside clean images (see ``stages.external``)."""

    def __init__(self, out: str, model: ModelConfig, external: ExternalImages, attribution: AttributionConfig,
                 features: FeatureConfig, maps_fraction: float = 0.0) -> None:  # fmt: skip
        Job.__init__(self, out, model)
        if attribution.baseline == "pair" and not external.paired:
            raise RaydetectError("the paper protocol explains each image against its twin: it needs paired images")
        if reference_budget(attribution, features):
            raise RaydetectError("baseline 'train', LID and Mahalanobis draw references from an attack job's clean images; "
                                 "with imported images use --baseline blur or black, and squeeze as the only peer")  # fmt: skip
        self.external, self.attribution, self.features = external.validate().resolved(), attribution, features
        self.references, self.maps_fraction = None, maps_fraction
        self.reference_ids = []
        self.resume_key = self.progress_key = "pair_id" if attribution.baseline == "pair" else "id"
        self.unit = "pairs" if attribution.baseline == "pair" else "images"
        self.total = 0

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        return {"external": self.external.describe(), "model": to_dict(model), "attribution": to_dict(self.attribution),
                "features": to_dict(self.features)}  # fmt: skip

    def read(self, model: ModelConfig, done: set[str]) -> Any:
        key = "pair_id" if self.resume_key == "pair_id" else "item"
        ds, self.pending, self.total = read_external(self.external, model_info(model.name).preprocess, done, key)
        return ds

    def inputs(self) -> int:
        return self.total


class AuditJob(_FromSource):
    """Score every input with a detector bundle; rows go to ``<out>/rows``."""

    name = "audit"
    resume_key = progress_key = "id"
    decodes = True

    def __init__(self, out: str, model: ModelConfig, source: Source | DatasetSource, detector: Detector, bundle: str) -> None:
        super().__init__(join(out, "rows"), model, source)
        self.detector, self.bundle = detector, bundle

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        keyed = self.detector.configs()[1].jitter > 0
        return {
            "source": self.source_config(),
            "bundle": self.bundle,
            "model": to_dict(model),
            "threshold": self.detector.threshold,
            "provenance": self.detector.provenance,
            # Which key drew the views' strengths (a fingerprint, never the key): an owner re-running
            # the audit can tell whether the same secret was used.
            **({"views_key": key_fingerprint(self.detector.views_key or secret())} if keyed else {}),
        }

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        return AuditStage, (ConfiguredLoader(model), self.detector, plan.threads, plan.batch_size)


class EvaluateJob(_FromSource):
    """Attack images (adaptive attacks against the bundle itself) and score clean and adversarial
    images with the bundle. ``ids`` restricts the job to those images (e.g. a held-out split)."""

    name = "evaluate"

    def __init__(self, out: str, model: ModelConfig, source: Source, detectors: Sequence[Detector], bundles: Sequence[str],
                 attacks: Sequence[AttackConfig], ids: set[str] | None = None) -> None:  # fmt: skip
        super().__init__(out, model, source)
        self.detectors, self.bundles, self.attacks, self.ids = list(detectors), list(bundles), tuple(attacks), ids

    def config(self, model: ModelConfig, plan: Plan) -> dict[str, Any]:
        ids = sorted(self.ids) if self.ids is not None else None
        many = {"compare": self.bundles[1:]} if len(self.bundles) > 1 else {}  # a one-bundle job's record is as before
        return {"source": self.source_config(), "bundle": self.bundles[0], **many, "model": to_dict(model),
                "attacks": [to_dict(a) for a in self.attacks], "ids": ids}  # fmt: skip

    def read(self, model: ModelConfig, done: set[str]) -> Any:
        ds, self.pending = read_inputs(self.source, model_info(model.name).preprocess, skip_ids=done, keep_ids=self.ids)
        return ds

    def stage(self, model: ModelConfig, plan: Plan) -> tuple[type, tuple[Any, ...]]:
        return EvaluateStage, (ConfiguredLoader(model), self.detectors, self.attacks, plan.threads, plan.batch_size)


class _DropDone:
    """Filter rows whose key is already in the output (resume), as a picklable callable."""

    def __init__(self, done_ref: Any, key: str) -> None:
        self.done_ref = done_ref
        self.key = key
        self._done: set[str] | None = None

    def __call__(self, table: Any) -> Any:
        if self._done is None:
            self._done = ray.get(self.done_ref)
        keep = [v not in self._done for v in table.column(self.key).to_pylist()]
        return table.filter(pa.array(keep, type=pa.bool_()))


def run_audit(
    source: Source | DatasetSource | ray.data.Dataset,
    out: str,
    bundle: str,
    resources: ResourceConfig = ResourceConfig(),
    model: str | None = None,
    weights: str | None = None,
    top: int = 20,
    address: str | None = None,
    trusted_keys: Sequence[Any] | None = None,
    device: str = "auto",
) -> tuple[JobSummary, str]:
    """Audit every input of ``source`` with the bundle: rows under ``<out>/rows`` (and
    ``<out>/rows.csv``), then the report, with thumbnails and heatmaps of the ``top`` most
    suspicious images (only those are explained again, here in the driver).

    ``source``: a :class:`Source` (files, Parquet, WebDataset shards; local, s3://, gs://), or a
    ``ray.data.Dataset`` with ``image`` and ``id`` columns (:class:`DatasetSource` names others).
    The bundle is verified here, once (signature against ``trusted_keys`` or
    ``RAYDETECT_TRUSTED_KEYS``, then checksums); the actors receive the verified detector.
    ``device``: where the actors run the model (``auto``: GPUs where the cluster has them).
    Returns the job's accounting and the report's location.
    """
    if isinstance(source, ray.data.Dataset):
        source = DatasetSource(source)
    det, mcfg = load_for_audit(bundle, model, weights, trusted_keys, device)
    summary = run_job(AuditJob(out, mcfg, source, det, bundle), resources, address)
    root = source.uri if isinstance(source, Source) else ""  # a Dataset has no root to show paths under
    # The report's few explanations run here, in the driver, whose node may have no GPU the actors had.
    driver = mcfg if mcfg.device == "cpu" else replace(mcfg, device="auto")
    report, results = audit_report(out, det, bundle, top, root, lambda: load_model(driver))
    return summary, write_report(out, report, results)


def run_evaluation(
    source: Source,
    out: str,
    bundle: str,
    attacks: Sequence[AttackConfig],
    resources: ResourceConfig = ResourceConfig(),
    ids: set[str] | None = None,
    address: str | None = None,
    device: str = "auto",
    compare: Sequence[str] = (),
) -> tuple[JobSummary, list[dict[str, Any]]]:
    """Attack and score ``source`` (or its ``ids``) against the bundle on ``device`` (``auto``: the plan
    decides); returns the accounting and one robustness summary per attack (``detect.evaluation.robustness_rows``).
    ``compare``: more bundles (same model) that score the same clean and adversarial images; then one summary
    per (detector, attack), each with its ``detector`` label and ``audit_passes``."""
    det, mcfg = load_for_audit(bundle, device=device)
    dets = [det]
    for other in compare:
        d, _ = load_for_audit(other, model=mcfg.name, device=device)
        dets.append(d)
    summary = run_job(EvaluateJob(out, mcfg, source, dets, [bundle, *compare], attacks, ids), resources, address)
    rows = read_output(out).to_pylist()
    if not compare:
        return summary, robustness_rows(rows, det.threshold)
    return summary, [
        {"detector": label, "bundle": b, "audit_passes": d.audit_passes(), **r}
        for label, b, d in zip(detector_labels(dets), [bundle, *compare], dets, strict=True)
        for r in robustness_rows([r for r in rows if r.get("detector") == label], d.threshold)
    ]
