from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.config import ModelConfig
from raydetect.images import batches, load_image_folder
from raydetect.models import load_model
from tests.conftest import imagenet_sample_or_skip


@pytest.mark.slow
@pytest.mark.shared
def test_efficientnet_lite0_top1_on_the_shared_sample() -> None:
    data = imagenet_sample_or_skip()
    model = load_model(ModelConfig(name="efficientnet_lite0", device="cpu"))
    images = load_image_folder(data, model.info.preprocess)
    assert len(images.ids) == 500 and not images.errors
    x = torch.from_numpy(images.images)
    with torch.no_grad():
        pred = np.concatenate([model(x[sl]).argmax(1).numpy() for sl in batches(len(x), 50)])
    assert (pred == images.labels).mean() >= 0.85
