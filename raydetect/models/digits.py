"""digits_cnn: a small CNN on sklearn's real 8x8 digits, trained in seconds and cached on disk.

It makes every stage testable on a laptop in seconds with a real (if small) trained model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from raydetect.config import ModelConfig
from raydetect.images import Preprocess, digits_split
from raydetect.models.classifier import ImageClassifier, ModelInfo, load_state_dict, load_strict

log = logging.getLogger(__name__)

DIGITS_MEAN = (0.3,)
DIGITS_STD = (0.4,)
DIGITS_CNN_VERSION = "v1"


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def info() -> ModelInfo:
    return ModelInfo(
        name="digits_cnn",
        num_classes=10,
        preprocess=Preprocess(resize=8, crop=8, channels=1),
        layers={"early": "features.1", "middle": "features.4", "late": "features.6"},
    )


def cache_dir() -> Path:
    """Where raydetect caches trained models (``RAYDETECT_CACHE`` or ``~/.cache/raydetect``)."""
    return Path(os.environ.get("RAYDETECT_CACHE", Path.home() / ".cache" / "raydetect")).expanduser()


def train_digits_cnn(seed: int = 0, epochs: int = 40) -> tuple[dict[str, torch.Tensor], float]:
    """Train :class:`DigitsCNN` on the digits train split; return its weights and test accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits_split()
    model = ImageClassifier(DigitsCNN(), DIGITS_MEAN, DIGITS_STD, info())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1) == torch.from_numpy(y_test)).float().mean().item()
    return model.net.state_dict(), acc


def build(cfg: ModelConfig) -> ImageClassifier:
    """The network with ``--weights``, random weights, or the cached trained weights (trained once)."""
    net = DigitsCNN()
    if cfg.weights:
        load_strict(net, load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        path = cache_dir() / f"digits_cnn-{DIGITS_CNN_VERSION}.pt"
        if not path.is_file():
            log.info("training digits_cnn once; cached at %s", path)
            state, acc = train_digits_cnn()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)  # atomic: concurrent actors never read a half-written file
            log.info("digits_cnn test accuracy %.3f", acc)
        load_strict(net, load_state_dict(path), str(path))
    return ImageClassifier(net, DIGITS_MEAN, DIGITS_STD, info())
