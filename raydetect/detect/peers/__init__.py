"""The field's reference detectors as feature extractors, one file each (``registry.PEERS``).

A peer turns a batch of [0,1] images into a few numbers per image (N, D) in float64, in torch:
the same head, threshold, bundle and audit read them as they read the explanation's descriptor,
and with ``create_graph`` they stay functions of the image, so ``adaptive`` attacks them too.
Peers with statistics (LID, Mahalanobis) estimate them from clean reference images at
construction; the bundle stores those images, so every process recomputes the same statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raydetect.config import FeatureConfig
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier

LOGITS = "logits"  # the peer-layer name of the model's output


class Peer:
    """Base: ``features(x, create_graph)`` (N, len(names)) float64. ``key``: the auditor's key, for
    peers that draw randomness like the views (None: this process's ``RAYDETECT_SECRET``)."""

    key: bytes | None = None

    def __init__(self, model: ImageClassifier, cfg: FeatureConfig, references: torch.Tensor | None = None) -> None:
        self.model = model
        self.cfg = cfg

    def features(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def views(cfg: FeatureConfig) -> list:
        """Transformed copies of the image the peer classifies, (x, u) -> view, for ``squeeze_eot`` (none by default)."""
        return []


def layer_outputs(model: ImageClassifier, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """The outputs of ``layers`` (aliases, module paths or "logits") for a batch, by forward hooks."""
    modules = {name: model.layer(name) for name in layers if name != LOGITS}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n, m in modules.items()]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return [logits if name == LOGITS else seen[name] for name in layers]


def reference_batches(model: ImageClassifier, references: torch.Tensor | None, name: str, need: int, batch: int = 16):
    """The reference images on the model's device in batches, or a clear error when too few."""
    if references is None or len(references) < need:
        got = 0 if references is None else len(references)
        raise RaydetectError(f"{name} needs at least {need} clean reference images; got {got}")
    refs = references.to(model.device, torch.float32)
    return [refs[i : i + batch] for i in range(0, len(refs), batch)]
