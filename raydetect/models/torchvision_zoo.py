"""inception_v3 (the paper's model) and any other torchvision classifier.

Weights come from ``--weights FILE``, the torch hub cache, or a download when the machine is
online; offline without them, a clear error says how to provide them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from raydetect.config import ModelConfig
from raydetect.errors import RaydetectError
from raydetect.images import Preprocess
from raydetect.models.classifier import ImageClassifier, ModelInfo, load_state_dict, load_strict

# Layer aliases for torchvision models we know; others take dotted module paths.
LAYERS: dict[str, dict[str, str]] = {
    # Conv2d_4a_3x3 is the layer the paper's code explained.
    "inception_v3": {"early": "Conv2d_4a_3x3", "middle": "Mixed_5d", "late": "Mixed_7c"},
    "resnet18": {"early": "layer1", "middle": "layer2", "late": "layer4"},
    "resnet50": {"early": "layer1", "middle": "layer2", "late": "layer4"},
}


def names() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def info(name: str) -> ModelInfo:
    import torchvision.models as tvm

    weights_enum = tvm.get_model_weights(name).DEFAULT
    tf = weights_enum.transforms()
    return ModelInfo(
        name=name,
        num_classes=len(weights_enum.meta["categories"]),
        preprocess=Preprocess(resize=int(tf.resize_size[0]), crop=int(tf.crop_size[0])),
        layers=LAYERS.get(name, {}),
    )


def _cached_weights(url: str, name: str) -> Path:
    """The hub cache file for ``url``, downloaded if the machine is online; a clear error if not."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    if os.environ.get("RAYDETECT_OFFLINE"):
        reason = "RAYDETECT_OFFLINE is set"
    else:
        try:
            torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu")
            reason = ""
        except Exception as exc:  # any network failure: report it with how to fix
            reason = f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if not cached.is_file():
        raise RaydetectError(
            f"no weights for {name}: not in the torch cache at {cached} and {reason}. "
            f"Pass --weights FILE (a state dict from {url}), copy that file to {cached}, "
            "or use --random-weights for plumbing tests"
        )
    return cached


def build(name: str, cfg: ModelConfig) -> ImageClassifier:
    import torchvision.models as tvm

    weights_enum = tvm.get_model_weights(name).DEFAULT
    tf = weights_enum.transforms()
    kwargs: dict[str, object] = {}
    if name in ("inception_v3", "googlenet"):
        # The released weights were trained with transform_input=True and carry aux-logit heads.
        kwargs = {"aux_logits": True, "init_weights": False, "transform_input": True}
    net = tvm.get_model(name, weights=None, **kwargs)
    if cfg.weights:
        load_strict(net, load_state_dict(cfg.weights), cfg.weights)
    elif not cfg.random_weights:
        path = _cached_weights(weights_enum.url, name)
        load_strict(net, load_state_dict(path), str(path))
    return ImageClassifier(net, tuple(tf.mean), tuple(tf.std), info(name))
