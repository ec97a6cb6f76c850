"""L-inf attacks on [0,1] images. Each file is one attack's update rule; ``base`` owns the rest.

Attacks that know the detector get what they need of it injected (``views`` for squeeze_eot, a
differentiable detector logit for adaptive), so this layer never imports the detector.
"""

from collections.abc import Sequence

from raydetect.attacks.adaptive import Adaptive, DetectorLogit
from raydetect.attacks.base import Attack, AttackResult, margin, quantize, random_targets, stable_key
from raydetect.attacks.bim import BIM, PGD
from raydetect.attacks.deepfool import DeepFool
from raydetect.attacks.fgsm import FGSM, PaperBIM
from raydetect.attacks.squeeze import SqueezeEOT, View
from raydetect.config import AttackConfig
from raydetect.models import ImageClassifier

ATTACKS: dict[str, type[Attack]] = {
    "bim": BIM, "fgsm": FGSM, "pgd": PGD, "paper_bim": PaperBIM, "deepfool": DeepFool, "squeeze_eot": SqueezeEOT,
    "adaptive": Adaptive,
}  # fmt: skip


def make_attack(
    model: ImageClassifier,
    cfg: AttackConfig,
    quantize: bool = True,
    views: Sequence[View] = (),
    detector: DetectorLogit | None = None,
) -> Attack:
    """The attack ``cfg.method`` names; ``quantize=False`` keeps float adversarials (the paper's protocol).

    ``views`` (squeeze_eot) and ``detector`` (adaptive) describe the detector under attack.
    """
    if cfg.method == "squeeze_eot":
        return SqueezeEOT(model, cfg, quantize, views)
    if cfg.method == "adaptive":
        return Adaptive(model, cfg, quantize, detector)
    return ATTACKS[cfg.method](model, cfg, quantize)


__all__ = [
    "ATTACKS", "Attack", "AttackResult", "DetectorLogit", "View", "make_attack", "margin", "quantize", "random_targets",
    "stable_key",
]  # fmt: skip
