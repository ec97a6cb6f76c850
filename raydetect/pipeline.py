"""Ray jobs: read -> stage -> atomic Parquet parts, with resource planning and resume.

Each job is a chain of the stage functions (``attack_dataset``, ``feature_dataset``, ...) over a
``ray.data.Dataset``; this module only decides resources, skips work already done and accounts
for every input row.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, to_dict
from raydetect.data import Source, done_ids, open_filesystem, output_files, read_output, read_source
from raydetect.errors import RaydetectError
from raydetect.models import ConfiguredLoader, Preprocess, model_info

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Ray session and resources


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS, e.g. inside ``ray job submit``), else start a local Ray.

    A local Ray is for development on one machine: it starts without the dashboard and without
    pre-started idle workers, which on a 2-core laptop compete with the model actor for CPU.
    """
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.issue_detectors_config.detectors = []  # memory hints meant for other workloads; noise here
    ctx.enable_get_object_locations_for_metrics = False
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"worker_process_setup_hook": "raydetect._ray_workers.quiet_local_workers"},
                _system_config={"enable_worker_prestart": False},
            )
    except ConnectionError as exc:
        raise RaydetectError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


@dataclass(frozen=True)
class Plan:
    """What the stage actors get: how many, with which resources and torch threads."""

    num_actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    batch_size: int
    device: str

    def model_config(self, cfg: ModelConfig) -> ModelConfig:
        from dataclasses import replace

        return replace(cfg, device=self.device) if cfg.device == "auto" else cfg


def plan_resources(res: ResourceConfig, cluster: dict[str, float] | None = None) -> Plan:
    """Size the actor pool to the cluster.

    GPU clusters: one actor per ``gpus_per_actor`` (default 1) GPU, one CPU each. CPU only: each
    actor reserves one CPU fewer than the threads it runs, so read and decode tasks always find a
    free CPU (an actor pool that takes every CPU starves its own input); a 2-core laptop gets one
    actor with 2 threads that reserves 1 CPU.
    """
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus = float(cluster.get("GPU", 0))
    if res.gpus_per_actor > 0 or gpus >= 1:
        per = res.gpus_per_actor or 1.0
        if gpus < per:
            raise RaydetectError(f"asked for {per} GPU per actor but the cluster has {gpus:g} GPUs")
        actors = res.num_actors or max(1, int(gpus // per))
        return Plan(actors, res.cpus_per_actor or 1.0, per, max(1, min(4, cpus // actors)), res.batch_size or 64, "cuda")
    actors = res.num_actors or max(1, cpus // 8)
    threads = max(1, cpus // actors)
    num_cpus = res.cpus_per_actor or float(max(1, threads - 1))
    if num_cpus >= cpus:
        raise RaydetectError(f"{num_cpus:g} CPUs per actor leaves none of the cluster's {cpus} CPUs for reading data")
    return Plan(actors, num_cpus, 0.0, threads, res.batch_size or 16, "cpu")


def map_actors(ds: Any, stage: type, args: tuple[Any, ...], plan: Plan, **kwargs: Any) -> Any:
    """``ds.map_batches`` with a stage class on an actor pool sized and resourced by ``plan``."""
    import ray

    from raydetect.models import actor_runtime_env

    return ds.map_batches(
        stage,
        fn_constructor_args=args,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        runtime_env=actor_runtime_env(),
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Writing
from ray.data.datasource import Datasink  # noqa: E402  (pipeline is the Ray-only module)


class ParquetSink(Datasink):
    """Writes each write task's rows to one Parquet part file, atomically.

    Rows land in ``part-<uuid>.parquet.tmp`` and are renamed into place once complete (object
    stores write whole objects, so the name is final there). A job killed mid-write leaves at
    most ``.tmp`` files, which readers ignore and the next run deletes.
    """

    def __init__(self, uri: str) -> None:
        # Resolved here, in the driver: write tasks run in workers whose working directory differs.
        self.uri = uri if "://" in uri else open_filesystem(uri)[1]
        self.rows_written = 0

    def on_write_complete(self, write_result: Any) -> None:
        self.rows_written = int(sum(write_result.write_returns))

    def on_write_start(self, schema: Any = None) -> None:
        fs, root = open_filesystem(self.uri)
        fs.create_dir(root, recursive=True)

    def write(self, blocks: Any, ctx: Any) -> int:
        import uuid

        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b, preserve_index=False) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables, promote_options="default")
        fs, root = open_filesystem(self.uri)
        final = f"{root}/part-{uuid.uuid4().hex}.parquet"
        local = "://" not in self.uri
        target = final + ".tmp" if local else final
        with fs.open_output_stream(target) as f:
            pq.write_table(table, f, compression="zstd")
        if local:
            fs.move(target, final)
        return table.num_rows


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


def _write_json(out: str, name: str, payload: dict[str, Any]) -> None:
    """A small JSON file beside the part files of an output (local or object storage)."""
    fs, root = open_filesystem(out)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(json.dumps(payload, indent=2).encode())


def _count(out: str, job: str, start: float, inputs: int, skipped: int, written: int, config: dict[str, Any]) -> JobSummary:
    import pyarrow.compute as pc

    raw = read_output(out, columns=["id", "status"], dedupe_on=None)
    ids = raw.column("id")
    unique = len(pc.unique(ids))
    deduped = read_output(out, columns=["id", "status"])
    counts = deduped.group_by("status").aggregate([("id", "count")]).to_pylist()
    summary = JobSummary(
        job=job,
        output=out,
        inputs=inputs,
        skipped_done=skipped,
        rows_written=written,
        rows_total=deduped.num_rows,
        rows_by_status={c["status"]: c["id_count"] for c in counts},
        duplicate_ids=raw.num_rows - unique,
        seconds=time.perf_counter() - start,
        config=config,
    )
    _write_json(out, "_summary.json", summary.to_dict())
    return summary


def _write(ds: Any, out: str) -> int:
    sink = ParquetSink(out)
    ds.write_datasink(sink)
    return sink.rows_written


# --------------------------------------------------------------------------------------------
# Jobs


def run_attack_job(
    source: Source,
    out: str,
    model_cfg: ModelConfig,
    attacks: Sequence[AttackConfig],
    resources: ResourceConfig = ResourceConfig(),
    only_correct: bool = True,
    address: str | None = None,
) -> JobSummary:
    """Attack every image of ``source``; write clean + adversarial rows (with PNGs) under ``out``.

    Re-running with the same ``out`` skips images already written (resume).
    """
    from raydetect.attacks import attack_dataset

    start = time.perf_counter()
    if not attacks:
        raise RaydetectError("no attack configured")
    init_ray(address)
    plan = plan_resources(resources)
    cfg = plan.model_config(model_cfg)
    pre = _preprocess_of(cfg)
    config = {"source": asdict(source), "model": to_dict(cfg), "attacks": [to_dict(a) for a in attacks], "plan": asdict(plan)}
    claim_output(out, config)
    done = done_ids(out, "pair_id")
    ds = read_source(source, pre, skip_ids=done)
    written = 0
    if ds is not None:
        log.info(
            "attack job: %d actors x %d threads on %s, batch %d; %d images already done",
            plan.num_actors,
            plan.threads,
            plan.device,
            plan.batch_size,
            len(done),
        )
        ds = attack_dataset(ds, ConfiguredLoader(cfg), attacks, plan, only_correct)
        written = _write(ds, out)
    inputs = len(done_ids(out, "pair_id"))
    return _count(out, "attack", start, inputs, len(done), written, config)


def run_feature_job(
    attacks_dir: str,
    out: str,
    model_cfg: ModelConfig,
    attribution: AttributionConfig,
    features: FeatureConfig,
    resources: ResourceConfig = ResourceConfig(),
    maps_fraction: float = 0.0,
    references: np.ndarray | None = None,
    address: str | None = None,
) -> JobSummary:
    """Explain every row written by the attack job at ``attacks_dir``; write descriptor rows to ``out``."""
    import ray

    from raydetect.features import feature_dataset

    start = time.perf_counter()
    files = output_files(attacks_dir)
    if not files:
        raise RaydetectError(f"no attack output under {attacks_dir}; run the attack job first")
    init_ray(address)
    plan = plan_resources(resources)
    cfg = plan.model_config(model_cfg)
    config = {
        "attacks_dir": attacks_dir,
        "model": to_dict(cfg),
        "attribution": to_dict(attribution),
        "features": to_dict(features),
        "plan": asdict(plan),
    }
    claim_output(out, config)
    if attribution.baseline == "pair":
        # Output ids of the paper protocol are per (pair, attack): resume whole pairs.
        done = done_ids(out, "pair_id")
        key = "pair_id"
    else:
        done = done_ids(out, "id")
        key = "id"
    fs, _ = open_filesystem(attacks_dir)
    ds = ray.data.read_parquet(files, filesystem=fs)
    if done:
        done_ref = ray.put(done)
        ds = ds.map_batches(_DropDone(done_ref, key), batch_format="pyarrow")
    written = 0
    log.info(
        "feature job: %d actors x %d threads on %s, batch %d; %d rows already done",
        plan.num_actors,
        plan.threads,
        plan.device,
        plan.batch_size,
        len(done),
    )
    ds = feature_dataset(ds, ConfiguredLoader(cfg), attribution, features, plan, references, maps_fraction)
    written = _write(ds, out)
    inputs = read_output(attacks_dir, columns=["id"]).num_rows
    return _count(out, "features", start, inputs, len(done), written, config)


def run_pipeline_job(
    source: Source,
    out: str,
    model_cfg: ModelConfig,
    attacks: Sequence[AttackConfig],
    attribution: AttributionConfig,
    features: FeatureConfig,
    resources: ResourceConfig = ResourceConfig(),
    only_correct: bool = True,
    keep_png: bool = False,
    address: str | None = None,
) -> JobSummary:
    """Attack and explain in one pass (one actor pool); write descriptor rows under ``out``.

    The fast path for a full run: no intermediate attack output to write and re-read. Resumes
    per image like the attack job.
    """
    from raydetect.features import attack_feature_dataset

    start = time.perf_counter()
    init_ray(address)
    plan = plan_resources(resources)
    cfg = plan.model_config(model_cfg)
    config = {
        "source": asdict(source),
        "model": to_dict(cfg),
        "attacks": [to_dict(a) for a in attacks],
        "attribution": to_dict(attribution),
        "features": to_dict(features),
        "plan": asdict(plan),
    }
    claim_output(out, config)
    done = done_ids(out, "pair_id")
    ds = read_source(source, _preprocess_of(cfg), skip_ids=done)
    written = 0
    if ds is None:
        log.info("attack+feature job: all %d images already done in %s", len(done), out)
    else:
        log.info(
            "attack+feature job: %d actors x %d threads on %s, batch %d; %d images already done",
            plan.num_actors,
            plan.threads,
            plan.device,
            plan.batch_size,
            len(done),
        )
        ds = attack_feature_dataset(ds, ConfiguredLoader(cfg), attacks, attribution, features, plan, only_correct, keep_png)
        written = _write(ds, out)
    inputs = len(done_ids(out, "pair_id"))
    return _count(out, "attack+features", start, inputs, len(done), written, config)


class _DropDone:
    """Filter rows whose key is already in the output (resume), as a picklable callable."""

    def __init__(self, done_ref: Any, key: str) -> None:
        self.done_ref = done_ref
        self.key = key
        self._done: set[str] | None = None

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa
        import ray

        if self._done is None:
            self._done = ray.get(self.done_ref)
        keep = [v not in self._done for v in table.column(self.key).to_pylist()]
        return table.filter(pa.array(keep, type=pa.bool_()))


_JOB_FILE = "_job.json"  # the config, written when a job starts (``_summary.json`` when it ends)


def job_config(out: str) -> dict[str, Any] | None:
    """The config a previous job recorded in ``out`` (None if absent)."""
    fs, root = open_filesystem(out)
    for name in ("_summary.json", _JOB_FILE):
        try:
            with fs.open_input_stream(f"{root}/{name}") as f:
                return json.loads(f.read().decode()).get("config")
        except (OSError, ValueError):
            continue
    return None


# What decides a job's rows. Device, batch size and source limit do not: resuming on another
# machine, or with more images, is what resume is for.
_RESULT_KEYS = ("attacks", "attribution", "features")
_MODEL_KEYS = ("name", "weights", "random_weights")


def claim_output(out: str, config: dict[str, Any]) -> None:
    """Refuse to resume into ``out`` if its rows were made with another configuration.

    Resume skips images already in ``out``; rows of two configurations mixed in one output
    would train and report a detector on attacks nobody asked for. Records the config at the
    start, so a killed job is checked too.
    """
    previous = job_config(out)
    if previous is not None and output_files(out):
        diffs = [k for k in _RESULT_KEYS if k in previous and k in config and previous[k] != config[k]]
        old_model, new_model = previous.get("model", {}), config.get("model", {})
        diffs += [f"model {k}" for k in _MODEL_KEYS if k in old_model and old_model.get(k) != new_model.get(k)]
        if diffs:
            raise RaydetectError(
                f"{out} holds rows made with a different {', '.join(diffs)}; "
                "resuming would mix them. Use a new output directory, or delete this one"
            )
    _write_json(out, _JOB_FILE, {"config": config})


def check_same_model(attacks_dir: str, model: str) -> None:
    """Refuse to explain images with another model than the one that attacked them."""
    cfg = job_config(attacks_dir)
    if cfg and cfg.get("model", {}).get("name") not in (None, model):
        raise RaydetectError(f"{attacks_dir} was attacked with model {cfg['model']['name']}; pass --model {cfg['model']['name']}")


def _preprocess_of(cfg: ModelConfig) -> Preprocess:
    return model_info(cfg.name).preprocess
