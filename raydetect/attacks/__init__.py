"""L-inf attacks on [0,1] images. Each file is one attack's update rule; ``base`` owns the rest."""

from raydetect.attacks.base import Attack, AttackResult, quantize, random_targets, stable_key
from raydetect.attacks.bim import BIM, PGD
from raydetect.attacks.fgsm import FGSM, PaperBIM
from raydetect.config import AttackConfig
from raydetect.models import ImageClassifier

ATTACKS: dict[str, type[Attack]] = {"bim": BIM, "fgsm": FGSM, "pgd": PGD, "paper_bim": PaperBIM}


def make_attack(model: ImageClassifier, cfg: AttackConfig, quantize: bool = True) -> Attack:
    """The attack ``cfg.method`` names; ``quantize=False`` keeps float adversarials (the paper's protocol)."""
    return ATTACKS[cfg.method](model, cfg, quantize)


__all__ = ["ATTACKS", "Attack", "AttackResult", "make_attack", "quantize", "random_targets", "stable_key"]
