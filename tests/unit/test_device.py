"""The device is the job's: bundles hold none, the plan decides, Ray-incompatible device strings are
refused, randomness and memory do not depend on the device (issue 36). No GPU is needed: the plans
are planned for clusters described by their resources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, to_dict
from raydetect.detect import Detector
from raydetect.detect.bundle import load_for_audit
from raydetect.detect.fit import fit_head
from raydetect.errors import RaydetectError
from raydetect.explain import feature_names
from raydetect.explain.ig import integrated_gradients
from raydetect.models import runtime
from raydetect.models.runtime import resolve_device, seeded_uniform
from raydetect.stages.plan import HEAD, plan_resources

GPU_NODE = [{"CPU": 16.0, "GPU": 2.0, HEAD: 1.0}]
CPU_NODE = [{"CPU": 16.0, HEAD: 1.0}]


def _bundle(tmp_path, device: str) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    fcfg = FeatureConfig(descriptors=("stats",), quantiles=8)
    det = Detector(
        head=fit_head("lr", X, y), threshold=0.5, target_fpr=0.05,
        model_config=to_dict(ModelConfig(name="digits_cnn", device=device)),
        attribution=to_dict(AttributionConfig(n_steps=4, views=(), jitter=0.0)), features=to_dict(fcfg),
        feature_names=feature_names(fcfg)[:4], trained_on=["bim-untargeted-0.3"], metrics={}, params={},
    )  # fmt: skip
    return det.save(tmp_path / f"det-{device}")


@pytest.mark.parametrize("trained_on", ["cpu", "cuda", "auto"])
def test_a_bundle_holds_no_device_and_the_plan_decides(trained_on, tmp_path) -> None:
    path = _bundle(tmp_path, trained_on)
    assert "device" not in json.loads((tmp_path / f"det-{trained_on}" / "manifest.json").read_text())["model"]
    _, mcfg = load_for_audit(path)
    assert mcfg.device == "auto"
    # On a GPU cluster the actors get the GPU the plan reserved, whatever the bundle was trained on ...
    gpu = plan_resources(ResourceConfig(), GPU_NODE, device=mcfg.device)
    assert gpu.num_gpus == 1 and gpu.model_config(mcfg).device == "cuda"
    # ... on a CPU cluster, the CPU.
    cpu = plan_resources(ResourceConfig(), CPU_NODE, device=mcfg.device)
    assert cpu.num_gpus == 0 and cpu.model_config(mcfg).device == "cpu"


def test_an_old_manifest_that_names_a_device_loads_as_auto(tmp_path) -> None:
    """Bundles written before the device left the manifest say "cpu" or "cuda": the job decides anyway."""
    import hashlib

    folder = tmp_path / "det-auto"
    _bundle(tmp_path, "auto")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["device"] = "cuda"  # as a bundle trained on a GPU wrote it
    data = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(data)
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    fixed = [f"{hashlib.sha256(data).hexdigest()}  manifest.json" if ln.endswith("manifest.json") else ln for ln in sums]
    (folder / "SHA256SUMS").write_text("\n".join(fixed) + "\n")
    det, mcfg = load_for_audit(str(folder))
    assert "device" not in det.model_config and mcfg.device == "auto"
    assert load_for_audit(str(folder), device="cpu")[1].device == "cpu"  # the job's choice


def test_device_cpu_gives_a_cpu_plan_on_a_gpu_cluster() -> None:
    plan = plan_resources(ResourceConfig(), GPU_NODE, device="cpu")
    assert (plan.device, plan.num_gpus) == ("cpu", 0.0)
    assert plan.model_config(ModelConfig(device="cpu")).device == "cpu"
    with pytest.raises(RaydetectError, match="--device cpu"):
        plan_resources(ResourceConfig(gpus_per_actor=1), GPU_NODE, device="cpu")
    with pytest.raises(RaydetectError, match="GPU"):  # cuda asked for on a cluster without one
        plan_resources(ResourceConfig(), CPU_NODE, device="cuda")


def test_device_strings_ray_cannot_honour_are_refused() -> None:
    assert ModelConfig(device="cuda:0").validate(ray=True).device == "cuda:0"
    assert ModelConfig(device="cuda:1").validate().device == "cuda:1"  # one process, no Ray: fine
    with pytest.raises(RaydetectError, match="--device cuda"):
        ModelConfig(device="cuda:1").validate(ray=True)
    for bad in ("gpu", "cuda:x", "cuda1", "tpu"):
        with pytest.raises(RaydetectError, match="device must be"):
            ModelConfig(device=bad).validate()
    with pytest.raises(RaydetectError, match="at most 1"):
        ResourceConfig(gpus_per_actor=2).validate()
    gpu = plan_resources(ResourceConfig(), GPU_NODE)
    assert gpu.model_config(ModelConfig(device="cuda:0")).device == "cuda:0"


def test_scoring_runs_in_full_float32() -> None:
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    resolve_device("cpu")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_keyed_draws_come_from_cpu_generators_whatever_the_batch_or_device(monkeypatch) -> None:
    keys = np.array([5, 17, 3, 99])
    a = seeded_uniform(keys, 7, (3, 2))
    b = seeded_uniform(keys[::-1].copy(), 7, (3, 2))
    assert torch.equal(a, b.flip(0)) and torch.equal(a[1:2], seeded_uniform(keys[1:2], 7, (3, 2)))
    assert not torch.equal(a, seeded_uniform(keys, 8, (3, 2)))
    made = []
    real = torch.Generator

    def generator(device: str = "cpu") -> torch.Generator:
        made.append(str(device))
        return real(device)

    monkeypatch.setattr(runtime.torch, "Generator", generator)
    out = seeded_uniform(keys, 7, (3, 2), "meta")  # a device other than the CPU: the draws are still the CPU's
    assert out.device.type == "meta" and made == ["cpu"] * len(keys)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))


def test_ig_in_smaller_chunks_is_the_same_attribution() -> None:
    model = _tiny_model()
    x, base = torch.rand(6, 3, 8, 8), torch.zeros(6, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    full = integrated_gradients(model, x, base, t, 4, "riemann_trapezoid", chunk=64)
    for chunk in (1, 4, 12):
        assert torch.allclose(integrated_gradients(model, x, base, t, 4, "riemann_trapezoid", chunk=chunk), full, atol=1e-6)


def test_an_out_of_memory_pass_is_retried_at_half_the_chunk(digits_model, digits_test, monkeypatch) -> None:
    from raydetect.explain import Explainer

    cfg = AttributionConfig(n_steps=4, views=(), jitter=0.0, internal_batch_size=64)
    x = torch.from_numpy(digits_test.images[:6])
    want = Explainer(digits_model, cfg)(x, keys=np.arange(6))
    ex = Explainer(digits_model, cfg)
    real, seen = ex.attribute, []

    def small_memory(call):
        seen.append(call.chunk)
        if call.chunk > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(call)

    ex.attribute = small_memory
    got = ex(x, keys=np.arange(6))
    assert seen[:4] == [64, 32, 16, 8] and ex.chunk_cap == 8
    assert np.allclose(got.attributions, want.attributions, atol=1e-5)


def test_a_memory_budget_sizes_the_chunk(digits_model, digits_test, monkeypatch) -> None:
    from raydetect.explain import Explainer

    x = torch.from_numpy(digits_test.images[:4])
    per_input = runtime.pass_bytes_per_input(digits_model, x)
    assert per_input > x[0].numel() * 4  # at least the input's activations, kept for the backward pass
    monkeypatch.setenv(runtime.PASS_MEMORY_ENV, f"{3 * per_input / 2**20}")
    ex = Explainer(digits_model, AttributionConfig(n_steps=4, views=(), jitter=0.0))
    assert ex._chunk(x) == 3
    monkeypatch.setenv(runtime.PASS_MEMORY_ENV, "lots")
    with pytest.raises(RaydetectError, match="MB > 0"):
        runtime.pass_memory_budget(torch.device("cpu"))
