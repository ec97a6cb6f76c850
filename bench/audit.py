"""Audit throughput on Ray against a plain loop, fixed and per-image costs, and peak memory, in one run.

    python bench/audit.py [--sizes 100 300] [--repeats 3] [--data ../shared/data/imagenet-sample]
    python bench/audit.py --memory 500 5000 --repeats 1     # flat memory: 5,000 distinct images
    python bench/audit.py --contention 64 --repeats 3       # what Ray's own processes cost the model
    python bench/audit.py --startup --repeats 3             # the audit actor's fixed cost, step by step
    python bench/audit.py --steady 160 --repeats 5          # per-image cost: plain loop, stage, Ray actor

Plain loop: ``Detector.score`` over the same files in one process, batches of 16 (model load,
JPEG decode and the score; nothing written). Ray: ``run_audit`` on a local Ray that is already up
(Ray start-up and Ray Data's helper actors are measured once and reported apart), timed as the
job's own ``JobSummary.seconds`` and as the whole call (report and its 20 re-explained images
included). Each repeat runs plain then Ray at every size, interleaved, so load from other work on
the machine hits both sides alike; the fixed and per-image costs come from the two sizes.

Peak memory: a sampler thread reads RSS every 0.5 s (at 0.1 s it took a visible share of the
plain loop's CPU, which runs in the same process) of this process (the driver) and of every
process under it (the local Ray it started: raylet, GCS, workers), naming the audit actor by its
process title (``ray::...AuditStage...``, Ray's ``MapWorker`` title). Other engineers' Ray
sessions are not below this process, so they are not counted.

The detector bundle: trained here once (fused attack+feature job on the first 32 images of the
sample, efficientnet_lite0, raydetect's default attribution and descriptors, untargeted BIM-10 at
4/255, logistic regression; small, since scoring costs the same whatever trained the head) and
cached under runs/bench-audit/ (gitignored); --bundle uses another. The audited images are the
sample's next images (offset 32), as a user audits unseen data;
for --memory the benchmark writes 10 distinct variants of each sample image (flips and crops,
re-encoded as JPEG, new ids) to a temporary folder, removed afterwards.

Every measurement is one JSON line in --jsonl with the command that produced it and the load
average at its start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
BUNDLE_DIR = ROOT / "runs" / "bench-audit"
TRAIN_IMAGES = 32  # the bundle's cost per scored image does not depend on how many images trained it


class _StartupProbe:
    """A Ray actor that starts as the audit actor does, timing each step (``--startup``)."""

    def __init__(self) -> None:
        self.started = time.time()  # the actor's Python is up: worker process, ray, the actor class
        self.process_created = _psutil().Process().create_time()

    def run(self, bundle: str, batches: list[dict[str, Any]]) -> dict[str, float]:
        t = {"process_created": self.process_created, "actor_class_ready": self.started, "method_called": time.time()}
        from raydetect.detect.bundle import load_for_audit
        from raydetect.models import ConfiguredLoader
        from raydetect.stages.audit import AuditStage

        t["imported"] = time.time()
        det, mcfg = load_for_audit(bundle)
        stage = AuditStage(ConfiguredLoader(mcfg), det, threads=2, batch_size=16)
        t["model_loaded"] = time.time()
        for i, b in enumerate(batches):
            stage(b)
            t[f"batch_{i}"] = time.time()
        return t


def _steps(t: dict[str, float], asked: float) -> dict[str, float]:
    return {
        "process started": t["process_created"] - asked,  # shown summed with the next: see startup_markdown
        "Python (and Ray worker) up": t["actor_class_ready"] - t["process_created"],
        "imports (torch, raydetect)": t["imported"] - t["method_called"],
        "bundle and model loaded": t["model_loaded"] - t["imported"],
        "first batch of 16 (warm-up)": t["batch_0"] - t["model_loaded"],
        "second batch of 16": t["batch_1"] - t["batch_0"],
    }


def startup(bundle: str, data: Path, repeats: int) -> list[dict[str, Any]]:
    """Where the audit actor's fixed cost goes: process start, imports, model load, first batches."""
    import ray

    from raydetect.models.runtime import actor_runtime_env

    batches = encoded_blocks(bundle, data, 32, 16)
    probe = ray.remote(_StartupProbe)
    records = []
    for rep in range(repeats):
        asked = time.time()
        actor = probe.options(num_cpus=1, runtime_env=actor_runtime_env()).remote()
        steps = _steps(ray.get(actor.run.remote(bundle, batches)), asked)
        ray.kill(actor)
        records.append({"kind": "startup", "side": "ray actor", "repeat": rep, "steps": steps})
        print(f"repeat {rep} Ray actor: " + "; ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
        asked = time.time()
        steps = _steps(_in_subprocess(_probe_in_process, bundle, batches), asked)
        records.append({"kind": "startup", "side": "fresh process", "repeat": rep, "steps": steps})
        print(f"repeat {rep} fresh process: " + "; ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    return records


STEADY_BLOCK = 30  # rows per block, as the audit's read makes them at a few hundred images


def _steady_plain(bundle: str, files: list[str]) -> dict[str, float]:
    """Seconds of ``Detector.score`` per batch of 16 after the first (warm-up) batch, in this process."""
    from raydetect.detect import Detector

    det = Detector.load(bundle)
    model = det.load_model("cpu")
    det.score(files[:16], model=model)
    start, c0 = time.perf_counter(), os.times()
    for i in range(16, len(files), 16):
        det.score(files[i : i + 16], model=model)
    c1 = os.times()
    return {"seconds": time.perf_counter() - start, "cpu_seconds": c1.user + c1.system - c0.user - c0.system,
            "images": len(files) - 16}  # fmt: skip


def _steady_stage(bundle: str, blocks: list[dict[str, Any]]) -> dict[str, float]:
    """The audit actor's own ``AuditStage`` over blocks of encoded images after the first (warm-up)
    block, on a worker thread as Ray Data calls it (``__init__`` on the calling thread, as there)."""
    from concurrent.futures import ThreadPoolExecutor

    from raydetect.detect.bundle import load_for_audit
    from raydetect.models import ConfiguredLoader
    from raydetect.stages.audit import AuditStage

    det, mcfg = load_for_audit(bundle)
    stage = AuditStage(ConfiguredLoader(mcfg), det, threads=2, batch_size=16)

    def run() -> dict[str, float]:
        stage(blocks[0])
        start, c0 = time.perf_counter(), os.times()
        for b in blocks[1:]:
            stage(b)
        c1 = os.times()
        return {"seconds": time.perf_counter() - start, "cpu_seconds": c1.user + c1.system - c0.user - c0.system,
                "images": sum(len(b["id"]) for b in blocks[1:])}  # fmt: skip

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


class _SteadyActor:
    """A Ray actor started as the audit actor is (one CPU, the actor runtime environment)."""

    def run(self, bundle: str, blocks: list[dict[str, Any]]) -> dict[str, float]:
        return _steady_stage(bundle, blocks)


def steady(bundle: str, data: Path, images: int, repeats: int) -> list[dict[str, Any]]:
    """Per-image cost once warm, the first block or batch left out, interleaved per repeat:

    1. the plain loop in a fresh process (a user's script: default environment);
    2. the audit's ``AuditStage`` in a fresh process with the actor's environment (one malloc
       arena, Ray's OMP_NUM_THREADS=1, then ``set_threads``), on a worker thread;
    3. the same in a Ray actor started as the audit's, beside the local Ray's own processes.

    (2) vs (1) is the stage's own code (decode from bytes, rows, output table, heap trim); (3) vs
    (2) is what running in a Ray worker process costs. Neither includes scheduling, reads or writes:
    the throughput runs measure the whole job.
    """
    import ray

    from raydetect.models.runtime import actor_runtime_env

    files = image_files(data, 0, images)
    blocks = encoded_blocks(bundle, data, images, STEADY_BLOCK)
    env = {**actor_runtime_env().get("env_vars", {}), "OMP_NUM_THREADS": "1"}  # Ray sets OMP_NUM_THREADS to num_cpus
    actor_cls = ray.remote(_SteadyActor)
    records = []
    for rep in range(repeats):
        for side in ("plain loop, fresh process", "AuditStage, fresh process", "AuditStage, Ray actor"):
            if side.startswith("plain"):
                r = _in_subprocess(_steady_plain, bundle, files)
            elif side.endswith("fresh process"):
                r = _in_subprocess(_steady_stage, bundle, blocks, env=env)
            else:
                actor = actor_cls.options(num_cpus=1, runtime_env=actor_runtime_env()).remote()
                r = ray.get(actor.run.remote(bundle, blocks))
                ray.kill(actor)
            ms = 1000 * r["seconds"] / r["images"]
            records.append({"kind": "steady", "side": side, "repeat": rep, "ms_per_image": ms, **r})
            print(f"repeat {rep} {side}: {ms:.1f} ms per image ({r['cpu_seconds'] / r['seconds']:.2f} cores busy)")
    return records


def _probe_in_process(bundle: str, batches: list[dict[str, Any]]) -> dict[str, float]:
    """The probe's steps in a plain Python process (what a user's own loop pays to start)."""
    return _StartupProbe().run(bundle, batches)


def _psutil() -> Any:
    """The psutil that Ray bundles (ray/thirdparty_files), on sys.path once ray is imported."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


class PeakRSS:
    """Peak resident memory of this process and of the processes under it, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        psutil = _psutil()
        self.psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.driver = 0
        self.actor = 0
        self.workers = 0  # largest sum over all ray:: processes at one instant
        # The actor's RSS split: private memory (RssAnon) and the object store's shared pages it has
        # touched (RssShmem, counted once machine-wide, bounded by the store's size).
        self.actor_anon = self.actor_shmem = 0
        # [seconds, audit actor MiB, all Ray workers MiB, actor RssAnon MiB, actor RssShmem MiB] every 10 s
        self.series: list[list[float]] = []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        self.driver = max(self.driver, self.me.memory_info().rss)
        total = actor = 0
        for p in self.me.children(recursive=True):
            try:
                title = " ".join(p.cmdline())
                if not title.startswith("ray::"):
                    continue
                rss = p.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            total += rss
            if "AuditStage" in title:
                self.actor = max(self.actor, rss)
                actor = rss
                split = _rss_split(p.pid)
        self.workers = max(self.workers, total)
        now = time.perf_counter() - self._t0
        if actor:
            self.actor_anon, self.actor_shmem = max(self.actor_anon, split[0]), max(self.actor_shmem, split[1])
        if actor and (not self.series or now - self.series[-1][0] >= 10):
            self.series.append([round(now, 1), round(actor / 2**20), round(total / 2**20), *(round(x / 2**20) for x in split)])

    def mib(self) -> dict[str, float]:
        return {"driver_mib": self.driver / 2**20, "actor_mib": self.actor / 2**20, "ray_workers_mib": self.workers / 2**20,
                "actor_anon_mib": self.actor_anon / 2**20, "actor_shmem_mib": self.actor_shmem / 2**20,
                "series": self.series}  # fmt: skip


def _rss_split(pid: int) -> tuple[int, int]:
    """(RssAnon, RssShmem) of a process in bytes, from /proc (zeros where unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kib = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssShmem")))
        return int(kib["RssAnon"].split()[0]) * 1024, int(kib["RssShmem"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ensure_bundle(data: Path) -> str:
    """The cached bundle, trained on the sample's first images when missing."""
    bundle = BUNDLE_DIR / "corrected" / "detector"
    if (bundle / "manifest.json").exists():
        return str(bundle)
    from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source
    from raydetect.stages.reproduce import protocol_attacks
    from raydetect.stages.runner import FusedJob, run_job
    from raydetect.stages.train import run_training

    feats = str(BUNDLE_DIR / "corrected" / "features")
    job = FusedJob(feats, ModelConfig(name="efficientnet_lite0"), Source(str(data), limit=TRAIN_IMAGES),
                   protocol_attacks("corrected", 4 / 255)[:1], AttributionConfig(), FeatureConfig())  # fmt: skip
    run_job(job, ResourceConfig())
    return run_training(feats, str(BUNDLE_DIR / "corrected"), kinds=("lr",), use_ray=False, n_boot=100).bundle


def encoded_blocks(bundle: str, data: Path, n: int, block: int) -> list[dict[str, Any]]:
    """The first ``n`` images as the audit's read hands them to its actor (encoded bytes, the
    bundle model's preprocessing), in blocks of ``block`` rows (at most the reader's 32)."""
    import numpy as np

    from raydetect.config import Source
    from raydetect.models import model_info
    from raydetect.stages.read import ReadImages, make_reader, plan_inputs

    source = Source(str(data), limit=n)
    kind, items = plan_inputs(source)
    det_model = json.loads((Path(bundle) / "manifest.json").read_text())["model"]["name"]
    reader = ReadImages(make_reader(source, kind, model_info(det_model).preprocess, decode=False))
    chunks = [items[i : i + block] for i in range(0, len(items), block)]
    return [b for c in chunks for b in reader({k: np.array([it[k] for it in c]) for k in c[0]})]


def image_files(data: Path, offset: int, n: int) -> list[str]:
    """The files an audit of ``Source(data, offset, limit=n)`` reads, in the same order."""
    from raydetect.config import Source
    from raydetect.stages.read import plan_inputs

    _, items = plan_inputs(Source(str(data), offset=offset, limit=n))
    return [str(data / it["item"]) for it in items]


def plain_loop(bundle: str, files: list[str], batch_size: int = 16) -> dict[str, Any]:
    """Load the bundle's model, then ``Detector.score`` over the files, batches of 16."""
    from raydetect.detect import Detector

    with PeakRSS() as mem:
        start = time.perf_counter()
        det = Detector.load(bundle)
        model = det.load_model("cpu")
        scores = [det.score(files[i : i + batch_size], model=model) for i in range(0, len(files), batch_size)]
        seconds = time.perf_counter() - start
    det.__dict__.pop("_model_cache", None)
    return {"seconds": seconds, "images": sum(len(s) for s in scores), **mem.mib()}


def ray_audit(bundle: str, data: Path, offset: int, n: int) -> dict[str, Any]:
    from raydetect.config import Source
    from raydetect.stages.runner import run_audit

    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem:
        start = time.perf_counter()
        summary, _ = run_audit(Source(str(data), offset=offset, limit=n), f"{tmp}/audit", bundle)
        wall = time.perf_counter() - start
    return {"seconds": summary.seconds, "wall_seconds": wall, "images": summary.inputs,
            "ok": summary.rows_by_status.get("ok", 0), **mem.mib()}  # fmt: skip


def start_ray(ray_niceness: bool = False) -> float:
    import ray

    from raydetect.stages.plan import init_ray

    t0 = time.perf_counter()
    if ray_niceness:  # Ray's own default (workers at niceness 15), to measure what init_ray changes
        ray.init(include_dashboard=False, _system_config={"enable_worker_prestart": False})
    init_ray()
    ray.data.range(8).map_batches(lambda b: b).count()  # Ray Data's helper actors, once per session
    return time.perf_counter() - t0


def variants(data: Path, out: Path, copies: int) -> int:
    """``copies`` distinct JPEGs of each sample image under ``out/<wnid>/`` (flips and crops)."""
    from PIL import Image, ImageOps

    n = 0
    for src in sorted(data.glob("*/*")):
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            (out / src.parent.name).mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                v = ImageOps.mirror(im) if k % 2 else im
                c = k // 2  # crop a few pixels off a different side per copy
                box = (c if k % 4 < 2 else 0, 0 if k % 4 < 2 else c, w - (0 if k % 4 < 2 else c), h - (c if k % 4 < 2 else 0))
                v.crop(box).save(out / src.parent.name / f"{src.stem}_v{k}.JPEG", quality=90)
                n += 1
    return n


class _Idle:
    """A Ray Data actor stage that only waits: the pipeline runs, the model actor's work does not."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.0)
        return batch


def _idle_pipeline(stop: threading.Event | None = None, blocks: int = 30) -> None:
    """A read -> actor -> driver pipeline shaped like the audit's, one block per second."""
    import ray

    ds = ray.data.range(blocks * 8, override_num_blocks=blocks).map_batches(
        _Idle, batch_size=8, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1
    )
    for _ in ds.iter_batches(batch_size=None):
        if stop is not None and stop.is_set():
            break


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process on the machine, with its title."""
    psutil = _psutil()

    out = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            out[p.pid] = (" ".join(p.cmdline())[:60] or p.name(), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _in_subprocess(fn: Any, *args: Any, niceness: int | None = None, env: dict[str, str] | None = None) -> Any:
    """``fn(*args)`` in a fresh process; ``niceness``: set that of every other Ray process first;
    ``env``: extra environment the process starts with (glibc reads MALLOC_* only at start)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in env or {}}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            os.environ.update(env or {})
            pool.submit(int).result()  # the worker process exists now, started with env
        finally:  # only the keys set here change back: other threads (Ray's) may read the environment
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if niceness is not None:
            _renice_ray(niceness, keep={p.pid for p in pool._processes.values()})
        return pool.submit(fn, *args).result()


def _renice_ray(niceness: int, keep: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Set the niceness of this process and every process under it but ``keep`` (lowering needs root)."""
    psutil = _psutil()

    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        if p.pid in keep:
            continue
        try:
            if p.nice() != niceness:
                p.nice(niceness)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def contention(bundle: str, data: Path, images: int, repeats: int) -> list[dict[str, Any]]:
    """What Ray itself costs the model on this machine, without any model work in Ray.

    1. CPU that Ray's own processes (driver's executor, raylet, GCS, helper actors, the idle stage
       actor) use while a pipeline shaped like the audit's runs with a stage that only sleeps.
    2. The plain loop, in a process of its own (as the audit actor is), timed alone, then with
       that idle pipeline running beside it, then with the pipeline's processes (this driver,
       raylet, GCS, workers) at niceness 19; interleaved per repeat. (Back to 0 needs root.)
    """
    before, t0 = cpu_by_process(), time.perf_counter()
    _idle_pipeline()
    wall, after = time.perf_counter() - t0, cpu_by_process()
    used = {name: cpu - before.get(pid, (name, 0.0))[1] for pid, (name, cpu) in after.items()}
    total = sum(used.values())
    records = [{"kind": "ray_background", "seconds": wall, "cpu_seconds": total, "cores_busy": total / wall,
                "by_process": {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0.1}}]  # fmt: skip
    print(f"idle Ray Data pipeline: {wall:.1f} s; all processes used {total:.1f} CPU s = {total / wall:.2f} cores")
    for name, cpu in list(records[0]["by_process"].items())[:8]:
        print(f"  {cpu:6.2f} s  {name}")
    files = image_files(data, 0, images)
    for rep in range(repeats):
        for side in ("alone", "beside Ray Data", "beside Ray Data at niceness 19"):
            stop = threading.Event()
            bg = threading.Thread(target=_idle_pipeline, args=(stop, 90), daemon=True)  # 90 s: outlasts the loop
            if side != "alone":
                bg.start()
                time.sleep(8)  # past the idle actor's start
            # In a process of its own, as the audit actor is.
            r = _in_subprocess(plain_loop, bundle, files, niceness=19 if side.endswith("19") else None)
            stop.set()
            if side != "alone":
                bg.join()
            _renice_ray(0)
            records.append({"kind": "contention", "side": side, "repeat": rep, "images": images, "seconds": r["seconds"]})
            print(f"repeat {rep} plain loop {side}: {r['seconds']:.1f} s for {images} images")
    return records


BEFORE = ("decode_in_read", "ray_niceness_15", "no_heap_trim")  # options that run an earlier code path


def latest_run(records: list[dict[str, Any]], kind: str, before: str | None = None) -> list[dict[str, Any]]:
    """Every record of the newest run (one command, one Ray session) that wrote ``kind`` records,
    of raydetect as it is (``before``: of the run with that earlier code path instead)."""
    runs = [r for r in records if r.get("kind") == kind and all(bool(r.get(f)) == (f == before) for f in BEFORE)]
    if not runs:
        return []
    key = (runs[-1]["command"], runs[-1]["commit"], runs[-1]["ray_start_s"])
    return [r for r in records if (r["command"], r["commit"], r.get("ray_start_s")) == key]


def _med(values: list[float], digits: int = 1) -> str:
    from raydetect.report.tables import median_range

    return median_range(values, digits)


def throughput_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's tables of one throughput run: per size, then fixed and per-image costs."""
    from raydetect.report.document import markdown_table

    records = [r for r in records if r["kind"] == "throughput"]
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["side"], r["size"]), []).append(r)
    small, large = sorted({r["size"] for r in records})
    sizes = []
    for n in (small, large):
        plain, ray_ = by[("plain", n)], by[("ray", n)]
        job = [p["seconds"] / q["seconds"] for p, q in zip(plain, ray_, strict=True)]
        wall = [p["seconds"] / q["wall_seconds"] for p, q in zip(plain, ray_, strict=True)]
        sizes.append([n, _med([p["seconds"] for p in plain]) + " s", _med([q["seconds"] for q in ray_]) + " s",
                      f"**{_med(job, 2)}**", _med([q["wall_seconds"] for q in ray_]) + " s",
                      _med(wall, 2)])  # fmt: skip
    # Per repeat, from the two sizes: t = fixed + n * per_image.
    costs, slopes = [], {}
    for label, side, key in (("plain loop", "plain", "seconds"), ("Ray, job", "ray", "seconds"),
                             ("Ray, wall with report", "ray", "wall_seconds")):  # fmt: skip
        a, b = by[(side, small)], by[(side, large)]
        per = slopes[label] = [(y[key] - x[key]) / (large - small) for x, y in zip(a, b, strict=True)]
        fixed = [x[key] - small * p for x, p in zip(a, per, strict=True)]
        costs.append([label, _med(fixed) + " s", _med([p * 1000 for p in per], 0) + " ms"])
    marginal = [p / q for p, q in zip(slopes["plain loop"], slopes["Ray, job"], strict=True)]
    loads = [x for r in records for x in (r["load_start"][0], r["load_end"][0])]
    peak = {k: max(r[k] for r in by[("ray", large)]) for k in ("driver_mib", "actor_mib")}
    return (
        f"`{records[0]['command']}` at commit {records[0]['commit']}; medians of {len(by[('plain', small)])} repeats "
        f"(range); 1-minute load average {min(loads):.1f}-{max(loads):.1f} over the run.\n\n"
        + markdown_table(["images", "plain loop", "Ray, job", "ratio (job)", "Ray, wall with report", "ratio (wall)"], sizes)
        + "\n\n" + markdown_table(["", "fixed per job", "per image"], costs)
        + f"\n\n**Marginal (per-image) throughput ratio Ray / plain: {_med(marginal, 2)}.** Peak RSS at {large} "
        f"images: driver {peak['driver_mib']:.0f} MiB, audit actor {peak['actor_mib']:.0f} MiB.\n"
    )  # fmt: skip


def memory_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's table of one memory run: peak RSS per size, and the change from the first."""
    from raydetect.report.document import markdown_table

    records = [r for r in records if r["kind"] == "memory"]
    first = records[0]

    def rel(r: dict[str, Any], k: str) -> str:
        return f"{r[k]:.0f} MiB" + ("" if r is first else f" ({100 * (r[k] / first[k] - 1):+.1f}%)")

    split = all("actor_anon_mib" in r for r in records)  # runs since the sampler split the actor's RSS
    rows = [[r["size"], r["dataset"], f"{r['seconds']:.0f} s", rel(r, "driver_mib"), rel(r, "actor_mib"),
             *((rel(r, "actor_anon_mib"), rel(r, "actor_shmem_mib")) if split else ()),
             rel(r, "ray_workers_mib"), f"{r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f}"] for r in records]  # fmt: skip
    heads = ["images", "inputs", "job", "peak RSS driver", "peak RSS audit actor",
             *(("of it private (RssAnon)", "of it object store (RssShmem)") if split else ()),
             "peak RSS all Ray workers", "load"]  # fmt: skip
    return (
        f"`{first['command']}` at commit {first['commit']}, one run each in one Ray session.\n\n"
        + markdown_table(heads, rows)
        + "\n"
    )


def series_markdown(records: list[dict[str, Any]], every: float = 60.0) -> str:
    """The audit actor's RSS over the largest audit of one --memory run, about every ``every`` s."""
    from raydetect.report.document import markdown_table

    big = max((r for r in records if r["kind"] == "memory"), key=lambda r: r["size"])
    split = all(len(p) == 5 for p in big["series"])  # private and object-store pages, where recorded
    rows, last = [], -every
    for point in big["series"]:
        t = point[0]
        if t - last >= every or point == big["series"][-1]:
            rows.append([f"{t:.0f} s", *(f"{v} MiB" for v in point[1 : 5 if split else 3])])
            last = t
    head = (f"`{big['command']}` at commit {big['commit']}: the audit of {big['size']} images ({big['seconds']:.0f} s), "
            "RSS sampled every 0.5 s, shown about once a minute.\n\n")  # fmt: skip
    cols = ["time into the audit", "audit actor", "all Ray workers"]
    cols += ["audit actor, private (RssAnon)", "audit actor, object store (RssShmem)"] if split else []
    return head + markdown_table(cols, rows) + "\n"


def contention_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's tables of one --contention run: Ray's own CPU, and the plain loop beside it."""
    from raydetect.report.document import markdown_table

    bg = next(r for r in records if r["kind"] == "ray_background")
    busiest = list(bg["by_process"].items())[:8]
    procs = [[name.strip(), f"{cpu:.1f} s", f"{100 * cpu / bg['seconds']:.1f}%"] for name, cpu in busiest]
    sides: dict[str, list[float]] = {}
    for r in records:
        if r["kind"] == "contention":
            sides.setdefault(r["side"], []).append(r["seconds"])
    alone = sides["alone"]
    rows = [[side, _med(v) + " s", _med([a / b for a, b in zip(alone, v, strict=True)], 2)] for side, v in sides.items()]
    images = next(r["images"] for r in records if r["kind"] == "contention")
    return (
        f"`{bg['command']}` at commit {bg['commit']}. An idle Ray Data pipeline (a stage that only sleeps) ran "
        f"{bg['seconds']:.0f} s; every process on the machine used {bg['cpu_seconds']:.1f} CPU s in that time, "
        f"{bg['cores_busy']:.2f} of the 2 cores. The busiest:\n\n"
        + markdown_table(["process", "CPU", "of one core"], procs)
        + f"\n\nThe plain loop over {images} images, in a process of its own, medians of {len(alone)} repeats (range):\n\n"
        + markdown_table(["plain loop", "time", "speed vs alone"], rows) + "\n"
    )  # fmt: skip


def startup_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's table of one --startup run: each step's median and range, Ray actor and fresh process."""
    from raydetect.report.document import markdown_table

    sides: dict[str, list[dict[str, float]]] = {}
    for r in records:
        if r["kind"] == "startup":
            sides.setdefault(r["side"], []).append(r["steps"])
    # psutil's process start time is in clock ticks since boot and drifts from time.time() by a
    # few tenths of a second here: show the process's start and its Python's start as one step.
    split = ("process started", "Python (and Ray worker) up")
    sides = {
        side: [{"process start to Python (and Ray worker) up": sum(r[k] for k in split)}
               | {k: v for k, v in r.items() if k not in split} for r in runs]
        for side, runs in sides.items()
    }  # fmt: skip
    steps = list(next(iter(sides.values()))[0])
    rows = [[step, *(_med([r[step] for r in runs], 2) + " s" for runs in sides.values())] for step in steps]
    rows.append(["**total**", *(_med([sum(r.values()) for r in runs], 2) + " s" for runs in sides.values())])
    n = len(next(iter(sides.values())))
    head = f"`{records[0]['command']}` at commit {records[0]['commit']}; medians of {n} repeats (range).\n\n"
    return head + markdown_table(["step", *sides], rows) + "\n"


def steady_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's table of one --steady run: per-image cost once warm, each side against the plain loop."""
    from raydetect.report.document import markdown_table

    sides: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "steady":
            sides.setdefault(r["side"], []).append(r)
    plain = [r["ms_per_image"] for r in sides["plain loop, fresh process"]]
    rows = [[side, _med([r["ms_per_image"] for r in runs], 0) + " ms",
             _med([p / r["ms_per_image"] for p, r in zip(plain, runs, strict=True)], 2),
             _med([r["cpu_seconds"] / r["seconds"] for r in runs], 2), runs[0]["images"]]
            for side, runs in sides.items()]  # fmt: skip
    first = records[0]
    return (
        f"`{first['command']}` at commit {first['commit']}; each run timed after its warm-up block or batch, "
        f"medians of {len(plain)} repeats (range), interleaved.\n\n"
        + markdown_table(["where", "per image", "throughput vs plain loop", "cores busy", "images timed"], rows) + "\n"
    )  # fmt: skip


def emit(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sizes", type=int, nargs=2, default=[100, 300], metavar=("SMALL", "LARGE"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", default=None, help="detector bundle (default: train one under runs/bench-audit/)")
    ap.add_argument("--memory", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                    help="instead: peak memory of Ray audits of SMALL sample images and LARGE variants")  # fmt: skip
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "audit.jsonl")
    ap.add_argument("--decode-in-read", action="store_true", help="before: decode in read tasks, float images to the actor")
    ap.add_argument("--ray-niceness", action="store_true", help="before: Ray workers at Ray's default niceness 15")
    ap.add_argument("--no-heap-trim", action="store_true", help="before: model actors never trim their heap")
    ap.add_argument(
        "--offset",
        type=int,
        default=TRAIN_IMAGES,
        help=f"first audited image of the sample (default {TRAIN_IMAGES}: after the bundle's training images)",
    )
    ap.add_argument("--contention", type=int, default=None, metavar="IMAGES",
                    help="instead: CPU of Ray's own processes; the plain loop of IMAGES alone vs beside Ray Data")  # fmt: skip
    ap.add_argument("--startup", action="store_true", help="instead: where the audit actor's fixed cost goes")
    ap.add_argument("--steady", type=int, default=None, metavar="IMAGES",
                    help="instead: per-image cost once warm: plain loop, AuditStage in a process, in a Ray actor")  # fmt: skip
    ap.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats of every audit job")
    ap.add_argument("--label", default="", help="free text recorded with each line (e.g. the change measured)")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if args.stats:
        import logging

        logging.basicConfig(format="%(message)s")
        logging.getLogger("raydetect.stages.runner").setLevel(logging.DEBUG)
    if args.decode_in_read:
        from raydetect.stages.runner import AuditJob

        AuditJob.decodes = False
    if args.no_heap_trim:  # read by the actors (models.runtime.actor_runtime_env passes it on)
        os.environ["RAYDETECT_NO_HEAP_TRIM"] = "1"
    bundle = args.bundle or ensure_bundle(args.data)
    ray_s = start_ray(args.ray_niceness)
    print(f"Ray start-up and Ray Data warm-up (once per session, not counted below): {ray_s:.1f} s")
    import subprocess

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    base = {"command": command, "commit": commit, "offset": args.offset, "label": args.label, "cpus": os.cpu_count(),
            "ray_start_s": ray_s,
            "decode_in_read": args.decode_in_read, "ray_niceness_15": args.ray_niceness,
            "no_heap_trim": args.no_heap_trim}  # fmt: skip

    if args.steady:
        for rec in steady(bundle, args.data, args.steady, args.repeats):
            emit(args.jsonl, {**base, **rec, "load_end": load()})
        return

    if args.startup:
        for rec in startup(bundle, args.data, args.repeats):
            emit(args.jsonl, {**base, **rec, "load_end": load()})
        return

    if args.contention:
        for rec in contention(bundle, args.data, args.contention, args.repeats):
            emit(args.jsonl, {**base, **rec, "load_end": load()})
        return

    if args.memory:
        small, large = args.memory
        with tempfile.TemporaryDirectory() as tmp:
            copies = -(-large // 500)
            made = variants(args.data, Path(tmp), copies)
            print(f"wrote {made} distinct variants to {tmp}")
            for name, data, offset, n in (("sample", args.data, 0, small), ("variants", Path(tmp), 0, large)):
                la0 = load()
                r = ray_audit(bundle, data, offset, n)
                rec = {
                    **base,
                    "kind": "memory",
                    "side": "ray",
                    "dataset": name,
                    "size": n,
                    **r,
                    "load_start": la0,
                    "load_end": load(),
                }
                emit(args.jsonl, rec)
                print(f"{n:5d} images: job {r['seconds']:.1f} s; peak RSS driver {r['driver_mib']:.0f} MiB, "
                      f"audit actor {r['actor_mib']:.0f} MiB, all Ray workers {r['ray_workers_mib']:.0f} MiB")  # fmt: skip
        return

    # An untimed plain run first: otherwise the first timed one alone pays torch's first-use set-up
    # in this process, which inflated the plain loop's fixed cost and deflated its slope in repeat 0.
    plain_loop(bundle, image_files(args.data, args.offset, 16))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for n in args.sizes:
            files = image_files(args.data, args.offset, n)
            for side in ("plain", "ray"):
                la0 = load()
                r = plain_loop(bundle, files) if side == "plain" else ray_audit(bundle, args.data, args.offset, n)
                rec = {
                    **base,
                    "kind": "throughput",
                    "side": side,
                    "size": n,
                    "repeat": rep,
                    **r,
                    "load_start": la0,
                    "load_end": load(),
                }
                emit(args.jsonl, rec)
                results.setdefault((side, n), []).append(rec)
                print(
                    f"repeat {rep} {side:5s} {n:4d} images: {r['seconds']:6.1f} s (load {la0[0]:.1f}->{rec['load_end'][0]:.1f})"
                )

    print()
    print(throughput_markdown([r for recs in results.values() for r in recs]))


if __name__ == "__main__":
    main()
