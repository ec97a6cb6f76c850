"""L-inf attacks on [0,1] images. Each file is one attack's update rule; ``base`` owns the rest.

Attacks that know the detector get what they need of it injected (``views`` for squeeze_eot, a
differentiable detector logit for adaptive), so this layer never imports the detector.
"""

from collections.abc import Sequence

from raydetect.attacks.adaptive import DetectorLogit
from raydetect.attacks.base import Attack, AttackResult, margin, quantize, random_targets, stable_key
from raydetect.attacks.squeeze import View
from raydetect.config import AttackConfig
from raydetect.models import ImageClassifier


def make_attack(
    model: ImageClassifier,
    cfg: AttackConfig,
    quantize: bool = True,
    views: Sequence[View] = (),
    detector: DetectorLogit | None = None,
) -> Attack:
    """The attack ``cfg.method`` names in ``raydetect.registry.ATTACKS``; ``quantize=False`` keeps float
    adversarials (the paper's protocol). ``views`` (attacks that need the detector's views) and
    ``detector`` (those that need its differentiable logit) describe the detector under attack."""
    spec = cfg.spec
    cls = spec.load()
    if spec.needs == "views":
        return cls(model, cfg, quantize, views)
    if spec.needs == "detector":
        return cls(model, cfg, quantize, detector)
    return cls(model, cfg, quantize)


__all__ = [
    "Attack", "AttackResult", "DetectorLogit", "View", "make_attack", "margin", "quantize", "random_targets", "stable_key",
]  # fmt: skip
