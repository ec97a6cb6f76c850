"""The GPU path in one call (issues 33 and 36): run it where a GPU is lent, record its lines.

    python bench/gpu.py [--data ../shared/data/imagenet-sample] [--images 100] [--out bench/results/gpu.jsonl]

On the device it measures, with the shipped detector and efficientnet_lite0:
  * the model's forward+backward ceiling (images/s at the audit's batch);
  * the detector's scoring in a plain loop, float32 (TF32 off, as raydetect runs) and under bf16
    autocast, with the bf16 scores' drift from float32;
  * the same scores on the CPU for a few images: the device must not change them (max |diff|);
  * `raydetect audit` end to end through Ray on ``--images`` sample images (images/s), and
    `raydetect evaluate --no-adaptive` on 16 held-back images (the held-out families on a GPU).
Each figure is one JSON line; nothing is asserted, a failed step is a line with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydetect.detect import Detector
from raydetect.detect.bundle import default_bundle
from raydetect.images import load_image_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"


def timed(fn: Any, repeats: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.jsonl")
    a = ap.parse_args()
    card = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    lines: list[dict[str, Any]] = []

    def emit(**kw: Any) -> None:
        kw = {"card": card, **kw}
        lines.append(kw)
        print(json.dumps(kw), flush=True)

    det = Detector.default()
    model = det.load_model(a.device)
    data = load_image_folder(a.data, model.info.preprocess, limit=a.images)
    x = torch.from_numpy(data.images)
    b = x[: a.batch].to(model.device)

    def fwd_bwd() -> None:
        xb = b.detach().requires_grad_(True)
        model(xb).logsumexp(1).sum().backward()

    s, _ = timed(fwd_bwd)
    ceiling = len(b) / s
    emit(step="forward+backward", images_per_s=ceiling, batch=len(b))
    passes = 16  # the default design's gradient passes per audited image
    s, fp32 = timed(lambda: det.score(x, model=model, batch_size=a.batch), repeats=2)
    emit(step="score fp32 loop", images_per_s=len(x) / s, share_of_ceiling=(len(x) / s) * passes / ceiling)
    with torch.autocast(model.device.type, dtype=torch.bfloat16):
        s, bf16 = timed(lambda: det.score(x, model=model, batch_size=a.batch), repeats=2)
    flips = float(np.mean((bf16 > det.threshold) != (fp32 > det.threshold)))
    emit(step="score bf16 autocast", images_per_s=len(x) / s, max_drift=float(np.abs(bf16 - fp32).max()), flag_changes=flips)
    cpu = det.score(x[:8], model=det.load_model("cpu"))
    emit(step="cpu vs device scores", images=8, max_abs_diff=float(np.abs(cpu - fp32[:8]).max()))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        audit = ["audit", str(a.data), "--limit", str(a.images), "--out", f"{tmp}/audit"]
        evaluate = ["evaluate", str(a.data), "--detector", default_bundle(), "--offset", "300", "--limit", "16",
                    "--eps", "4/255", "--no-adaptive", "--out", f"{tmp}/eval"]  # fmt: skip
        for name, cmd, n in (("audit", audit, a.images), ("evaluate", evaluate, 16)):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "raydetect", *cmd], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            out = (done.stdout + done.stderr)[-600:] if done.returncode else done.stdout.strip().splitlines()[-3:]
            emit(step=f"raydetect {name}", rc=done.returncode, seconds=wall, images_per_s=n / wall, tail=out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        for line in lines:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **line}) + "\n")


if __name__ == "__main__":
    main()
