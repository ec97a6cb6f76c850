"""Where and how models run: device choice, full float32 and per-image randomness that do not depend on
the device, torch threads, the memory a gradient pass may take, and the allocator settings that make
CPU gradient passes fast. Measured effects are in BENCHMARKS.md."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import numpy as np
import torch

from raydetect.errors import RaydetectError

log = logging.getLogger(__name__)


def full_float32() -> None:
    """Run float32 matmuls and cuDNN convolutions in full float32, not TF32 (cuDNN's default on Ampere and
    later): a bundle's threshold was calibrated on scores computed in float32, on the CPU as a rule, and
    TF32's 10-bit mantissa moves the scores a GPU computes away from them. Costs GPU throughput, which
    ``bench/gpu.py`` measures; bf16 autocast is the measured alternative. The legacy flags, since reading
    them raises once the newer ``fp32_precision`` API has set a mix (captum and others read them)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error. Every model is
    placed through here, so every model of the process runs in full float32 (:func:`full_float32`)."""
    full_float32()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RaydetectError(f"device {device!r} asked for, but no CUDA GPU is visible")
    return torch.device(device)


def seeded_uniform(keys: np.ndarray, seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, *shape) uniform draws in [0, 1), each image's from a CPU generator seeded by (seed, its key),
    then moved to ``device``: an image's draws depend on neither its batch nor the device (a CUDA
    generator's stream differs from the CPU's for the same seed)."""
    out = torch.empty((len(keys), *shape))
    for i, key in enumerate(keys):
        out[i] = torch.rand(shape, generator=keyed_generator(seed, key))
    return out.to(device)


def keyed_generator(seed: int, key: int) -> torch.Generator:
    """The CPU generator of one image's draws: seeded by (seed, the image's key)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(key)) % (1 << 63))


_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Keep freed tensor memory in the process instead of returning it to the OS at once.

    glibc serves large blocks (activations of a batch) with fresh mmap calls and unmaps them on
    free, so every forward/backward pass page-faults its activations in again. Raising the mmap
    and trim thresholds halves the CPU time of Integrated Gradients here (measured 17 -> 34 passes/s
    with efficientnet_lite0 on 2 cores). Peak memory stays reserved. Opt out with
    RAYDETECT_NO_MALLOC_TUNING=1; a no-op off glibc.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("RAYDETECT_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 2**31 - 1)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        log.debug("allocator tuning unavailable on this libc")


PASS_MEMORY_ENV = "RAYDETECT_PASS_MEMORY_MB"  # ResourceConfig.pass_memory_mb, as the actors read it
CUDA_FREE_SHARE = 0.5  # of the GPU memory free when a chunk is first sized: the default budget on CUDA


def pass_memory_budget(device: torch.device) -> int | None:
    """Bytes one gradient pass may take on ``device``: $RAYDETECT_PASS_MEMORY_MB when set, else on CUDA
    half the memory free now (the model and other actors' share already taken), else None (CPU: the
    measured chunk sizes serve, ``explain.explainers.DEFAULT_CHUNK``)."""
    given = os.environ.get(PASS_MEMORY_ENV)
    if given:
        try:
            mb = float(given)
        except ValueError:
            mb = -1.0
        if not mb > 0:
            raise RaydetectError(f"{PASS_MEMORY_ENV} must be a number of MB > 0; got {given!r}")
        return int(mb * 2**20)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_SHARE)
    return None


# A gradient pass keeps every activation for the backward pass and then holds gradients of about the
# same size, plus kernels' workspace: bytes per input ~ this many times the activations' bytes.
PASS_FACTOR = 3.0


def pass_bytes_per_input(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Estimated bytes one input of ``x``'s shape costs in a forward+backward pass of ``model``: the outputs
    of its leaf modules on one input (a no-grad forward), times :data:`PASS_FACTOR`."""
    total = 0

    def count(_: torch.nn.Module, __: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return max(1, int(total * PASS_FACTOR))


def actor_runtime_env(pass_memory_mb: float | None = None) -> dict[str, object]:
    """Runtime environment for model actors: the allocator settings of :func:`tune_allocator`, and the
    pass memory budget (:func:`pass_memory_budget`) when the job sets one.

    Ray Data runs a stage's ``__call__`` on a non-main thread, whose glibc arena cannot grow past
    64 MB and mmaps every large tensor whatever the thresholds; one arena (MALLOC_ARENA_MAX=1)
    fixes that, but only when set before the process starts, hence env vars. Measured: a feature
    job batch took 13-15 s without, 5.6 s with (efficientnet_lite0, 16 images, 16 IG steps).
    """
    budget = {} if pass_memory_mb is None else {PASS_MEMORY_ENV: f"{pass_memory_mb:g}"}
    if os.environ.get("RAYDETECT_NO_MALLOC_TUNING"):
        return {"env_vars": budget} if budget else {}
    big = str(2**31 - 1)
    env = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": big, "MALLOC_TRIM_THRESHOLD_": big, **budget}
    if os.environ.get("RAYDETECT_NO_HEAP_TRIM"):
        env["RAYDETECT_NO_HEAP_TRIM"] = "1"
    return {"env_vars": env}


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads for the calling thread; stages call it at the top of ``__call__``.

    Ray Data runs ``__init__`` and ``__call__`` on different threads, and each thread that runs
    parallel regions with more than one thread gets its own OpenMP team. Once libgomp manages more
    threads than there are CPUs it stops spinning between regions and sleeps instead, which left
    the actor's cores idle ~18% of the time on 2 cores. So ``__init__`` stays at Ray's
    OMP_NUM_THREADS (the actor's CPUs) and only the thread doing the work gets ``threads``.
    """
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _private_rss_bytes() -> int:
    """This process's private resident memory (RssAnon: resident minus file and shared pages; the
    object store's shared pages an actor has read do not count), 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrim:
    """Keep a long-running model process's private memory at its working level.

    With the allocator tuned (:func:`tune_allocator`, one arena, no automatic trimming), freed
    activations stay resident for the next batch, which is what makes gradient passes fast, and
    nothing hands back what a fragmenting heap no longer uses. (The steady RSS growth an audit
    actor showed turned out to be the object store's shared pages, not its heap: BENCHMARKS.md,
    "Memory"; this guard bounds the heap, and counts private memory only.) Called after each batch,
    it takes the highest RSS of the first ``warmup`` batches as the level, and once RSS exceeds
    it by ``slack`` hands every free page back (``malloc_trim``); the next batch faults in only
    what it uses. RSS back over the limit within ``settle`` batches of a trim is work that needs
    the memory (e.g. blocks larger than the first ones): the level rises to it instead, so trims
    never repeat batch after batch.
    """

    def __init__(self, warmup: int = 3, slack: float = 0.03, settle: int = 10) -> None:
        self.warmup, self.slack, self.settle = warmup, slack, settle
        self.calls = self.trims = 0
        self.level = 0
        self._last_trim = -settle - 1  # call number of the last trim
        self._trim = _malloc_trim()

    def __call__(self) -> None:
        if self._trim is None:
            return
        self.calls += 1
        rss = _private_rss_bytes()
        if self.calls <= self.warmup:
            self.level = max(self.level, rss)
        elif rss > self.level * (1 + self.slack):
            if self.calls - self._last_trim <= self.settle:
                self.level = rss
            else:
                self._trim(0)
                self.trims += 1
                self._last_trim = self.calls
                log.debug("RSS %.0f MiB over %.0f MiB: freed heap pages returned", rss / 2**20, self.level / 2**20)


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, where the allocator is tuned to keep freed memory (else None).
    RAYDETECT_NO_HEAP_TRIM=1 turns trimming off (``bench/audit.py --no-heap-trim``)."""
    if os.environ.get("RAYDETECT_NO_MALLOC_TUNING") or os.environ.get("RAYDETECT_NO_HEAP_TRIM"):
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_HEAP_TRIM: HeapTrim | None = None


def trim_heap() -> None:
    """:class:`HeapTrim` for this process (one per process: stages may nest); call after each batch."""
    global _HEAP_TRIM
    if _HEAP_TRIM is None:
        _HEAP_TRIM = HeapTrim()
    _HEAP_TRIM()
