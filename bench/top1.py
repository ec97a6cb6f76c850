"""Top-1 accuracy of a model on an ImageNet-style folder (default: the shared 500-image sample).

    python bench/top1.py [--model efficientnet_lite0] [--data ../shared/data/imagenet-sample]

Prints one line per model with top-1, images/s of the forward pass, and the image count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from raydetect.config import ModelConfig
from raydetect.images import batches, load_image_folder
from raydetect.models import load_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def top1(model_name: str, data: Path, batch_size: int = 32) -> tuple[float, float, int]:
    model = load_model(ModelConfig(name=model_name))
    images = load_image_folder(data, model.info.preprocess)
    x = torch.from_numpy(images.images)
    start = time.perf_counter()
    with torch.no_grad():
        pred = np.concatenate([model(x[sl].to(model.device)).argmax(1).cpu().numpy() for sl in batches(len(x), batch_size)])
    seconds = time.perf_counter() - start
    return float((pred == images.labels).mean()), len(x) / seconds, len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    acc, ips, n = top1(args.model, args.data)
    print(
        f"{args.model}: top-1 {100 * acc:.1f}% on {n} images of {args.data.name} "
        f"({ips:.1f} img/s forward, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
