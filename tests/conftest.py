"""Shared fixtures. Unit tests use digits_cnn (trained once per session into a temp cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYDETECT_SHARED", ROOT.parent / "shared")) / "data"
IMAGENET_SAMPLE = SHARED / "imagenet-sample"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the digits_cnn cache inside the test session, not the user's home."""
    if "RAYDETECT_CACHE" not in os.environ:
        os.environ["RAYDETECT_CACHE"] = str(tmp_path_factory.mktemp("raydetect-cache"))


@pytest.fixture(scope="session")
def digits_model():
    from raydetect.config import ModelConfig
    from raydetect.models import load_model

    return load_model(ModelConfig(name="digits_cnn", device="cpu"))


@pytest.fixture(scope="session")
def digits_test():
    from raydetect.images import load_digits_images

    return load_digits_images("test")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def imagenet_sample_or_skip() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"shared ImageNet sample not found at {IMAGENET_SAMPLE}")
    return IMAGENET_SAMPLE


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every test that needs Ray (tests/ray, tests/cli)."""
    import logging

    import ray
    from ray.data import DataContext

    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_bundle(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real detector bundle for digits_cnn: attack + features on 120 digits, then LR (no Ray Train)."""
    from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source
    from raydetect.stages.runner import FusedJob, run_job
    from raydetect.stages.train import run_training

    base = tmp_path_factory.mktemp("bundle")
    attacks = [AttackConfig(eps=0.3, steps=5), AttackConfig(mode="second", eps=0.3, steps=5)]
    job = FusedJob(str(base / "f"), ModelConfig(name="digits_cnn"), Source("digits", limit=120), attacks,
                   AttributionConfig(n_steps=4), FeatureConfig(quantiles=8))  # fmt: skip
    run_job(job, ResourceConfig(batch_size=32))
    return Path(run_training(str(base / "f"), str(base / "t"), kinds=("lr",), use_ray=False, n_boot=50).bundle)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium for browser tests: found on PATH, else installed with apt-get (Debian's
    ``chromium``) where we are root; skipped with the reason where neither works."""
    found = _find_chromium()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("no chromium on PATH and it cannot be installed here (needs root and apt-get: apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = ""
    for cmd in (
        ["apt-get", "install", "-y", "-q", "chromium"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing chromium timed out ({' '.join(cmd)})")
        log = done.stdout[-500:] + done.stderr[-500:]
        if cmd[1] == "install" and done.returncode == 0:
            break
    found = _find_chromium()
    if not found:
        pytest.skip(
            f"chromium could not be installed with apt-get: {log.strip().splitlines()[-1] if log.strip() else 'no output'}"
        )
    return found
