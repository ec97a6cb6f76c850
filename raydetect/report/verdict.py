"""The audit's verdict: is anything planted in the dataset, and roughly how much?

A detector flags some clean images by design, so a flag count means nothing until it is set
against the false alarms expected among that many clean images. That law comes from the bundle's
calibration: the threshold's false-positive rate on new clean images is Beta(a, b) (see
``detect.metrics.Calibration``), and the flags of n clean images are beta-binomial. Flags above its
95% range are evidence; flags inside it are not, however many they are.

How many adversarial images the flags imply depends on how often the detector catches them, which
was measured per attack, so the estimate is one per attack and a range across them. For an attack
caught at rate ``tpr``, the flag rate of a dataset holding a share ``p`` of such images is
``p * tpr + (1 - p) * fpr``, so ``p = (flag_rate - fpr) / (tpr - fpr)`` (Rogan-Gladen). Its 95%
interval comes from independent draws of the three rates, each from what measured it: the flags
among the scored images (Jeffreys), the calibration's Beta law, and the attack's detected count among
its held-out images (Jeffreys); each draw is clipped to [0, 1].

Numpy and scipy only: the report (``report.audit``) words it and writes it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LEVEL = 0.95
DRAWS = 20_000
# An attack is only estimable if its detection rate is above the false-alarm rate in nearly every
# draw; past this share of draws with tpr <= fpr, its flags say nothing about how many there are.
MAX_BLIND_SHARE = 0.025
NO_FAMILIES = "no per-family detection rates in this bundle"
NO_EVIDENCE = "no evidence of planted images at this sensitivity"
EVIDENCE = "evidence of adversarial images, more flags than false alarms alone explain"


@dataclass(frozen=True)
class Family:
    """An attack the bundle was measured on: ``detected`` of ``measured`` held-out adversarial images
    of it were flagged at the bundle's threshold."""

    name: str
    detected: int
    measured: int
    source: str  # where the bundle measured it

    @property
    def tpr(self) -> float:
        return self.detected / self.measured


@dataclass(frozen=True)
class FalseAlarms:
    """The Beta(a, b) law of the threshold's false-positive rate on new clean images, and what it rests on."""

    a: float
    b: float
    source: str  # in words: e.g. "the bundle's calibration on 400 clean images"

    @property
    def expected_fpr(self) -> float:
        return self.a / (self.a + self.b)

    def flagged_range(self, n: int, level: float = LEVEL) -> tuple[int, int]:
        """Central ``level`` range of the flags among ``n`` clean images (beta-binomial)."""
        from scipy.stats import betabinom

        lo, hi = betabinom.ppf([(1 - level) / 2, (1 + level) / 2], n, self.a, self.b)
        return int(lo), int(hi)


def false_alarms(calibration: dict[str, Any], metrics: dict[str, Any]) -> FalseAlarms | None:
    """The false-positive law of a bundle: its calibration's Beta law, else (older bundles) the
    held-out clean images' measured FPR (Jeffreys); None if it records neither."""
    try:
        n, rank = int(calibration["rows"]), int(calibration["rank"])
        return FalseAlarms(n + 1 - rank, rank, f"the bundle's calibration on {n} clean images")
    except (KeyError, TypeError, ValueError):
        pass
    overall = metrics.get("overall", {})
    try:
        n = int(overall["n_test_clean"])
        fp = round(float(overall["fpr"]) * n)
    except (KeyError, TypeError, ValueError):
        return None
    return FalseAlarms(fp + 0.5, n - fp + 0.5, f"the bundle's held-out clean images ({fp} of {n} flagged)") if n > 0 else None


def families(metrics: dict[str, Any]) -> list[Family]:
    """Each attack whose detection rate at the bundle's threshold the bundle records with its count:
    the held-out test pairs of the attacks it trained on (``per_attack``: ``tpr`` of
    ``n_test_adversarial``), and the robustness evaluation (``robustness``: ``flagged`` of
    ``n_success``), which scores images end to end as an audit does and so wins where both measured one."""
    found: dict[str, Family] = {}
    for name, ev in (metrics.get("per_attack") or {}).items():
        fam = _family(name, ev, "tpr", "n_test_adversarial", "held-out test pairs")
        if fam:
            found[name] = fam
    for row in metrics.get("robustness") or []:
        fam = _family(row.get("attack"), row, "flagged", "n_success", "robustness evaluation") if isinstance(row, dict) else None
        if fam:
            found[fam.name] = fam
    return list(found.values())


def _family(name: Any, record: Any, rate: str, count: str, source: str) -> Family | None:
    try:
        n, r = int(record[count]), float(record[rate])
    except (KeyError, TypeError, ValueError):
        return None
    if not name or n <= 0 or not math.isfinite(r):
        return None
    return Family(str(name), round(r * n), n, source)  # rate = detected / n exactly, so this is the count


@dataclass(frozen=True)
class Estimate:
    """The share of the scored images that are adversarial, if they are all like ``family``."""

    family: str
    tpr: float
    detected: int
    measured: int
    estimable: bool  # False: caught at about the false-alarm rate, so no estimate
    share: float  # point estimate, clipped to [0, 1]; NaN if not estimable
    share_range: tuple[float, float]
    images: int  # share * scored, rounded
    images_range: tuple[int, int]


@dataclass(frozen=True)
class Verdict:
    inputs: int
    scored: int
    flagged: int
    errors: int
    false_alarm_source: str  # "" if the bundle records no false-positive rate
    expected_false_alarms: float  # among ``scored`` clean images; NaN if unknown
    false_alarm_range: tuple[int, int] | None
    evidence: bool | None  # flags above the false-alarm range; None if that range is unknown
    estimates: list[Estimate] = field(default_factory=list)
    families_note: str = ""  # NO_FAMILIES when the bundle has none

    @property
    def estimable(self) -> list[Estimate]:
        return [e for e in self.estimates if e.estimable]

    @property
    def images_range(self) -> tuple[int, int] | None:
        """The range across estimable families: the lowest lower bound to the highest upper bound."""
        est = self.estimable
        return (min(e.images_range[0] for e in est), max(e.images_range[1] for e in est)) if est else None

    @property
    def headline(self) -> str:
        if not self.scored:
            return "no images scored"
        if self.evidence is None:
            return "none possible: the bundle records no false-positive rate to set the flags against"
        if not self.evidence:
            return NO_EVIDENCE
        return EVIDENCE

    def to_dict(self) -> dict[str, Any]:
        """As JSON: unknown figures (NaN) are null."""
        return _finite({**asdict(self), "headline": self.headline, "images_range": self.images_range, "level": LEVEL})


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return [_finite(x) for x in v] if isinstance(v, (list, tuple)) else v


def estimate(scored: int, flagged: int, fam: Family, fa: FalseAlarms, draws: int = DRAWS, seed: int = 0) -> Estimate:
    """The Rogan-Gladen share of ``fam``-like adversarial images among ``scored``, ``flagged`` of them
    flagged, with its 95% interval from independent draws of the three rates (module docstring)."""
    rng = np.random.default_rng(seed)
    flag = rng.beta(flagged + 0.5, scored - flagged + 0.5, draws)
    fpr = rng.beta(fa.a, fa.b, draws)
    tpr = rng.beta(fam.detected + 0.5, fam.measured - fam.detected + 0.5, draws)
    seen = tpr > fpr
    estimable = bool(np.mean(~seen) <= MAX_BLIND_SHARE) and fam.tpr > fa.expected_fpr
    if not estimable:
        nan = float("nan")
        return Estimate(fam.name, fam.tpr, fam.detected, fam.measured, False, nan, (nan, nan), 0, (0, 0))
    share = np.clip((flag[seen] - fpr[seen]) / (tpr[seen] - fpr[seen]), 0, 1)
    lo, hi = np.quantile(share, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    point = min(max((flagged / scored - fa.expected_fpr) / (fam.tpr - fa.expected_fpr), 0.0), 1.0)
    return Estimate(fam.name, fam.tpr, fam.detected, fam.measured, True, point, (float(lo), float(hi)),
                    round(point * scored), (math.floor(lo * scored), math.ceil(hi * scored)))  # fmt: skip


def verdict(inputs: int, scored: int, flagged: int, fa: FalseAlarms | None, fams: list[Family], seed: int = 0) -> Verdict:
    """The verdict on ``scored`` images (of ``inputs``), ``flagged`` of them flagged."""
    errors = inputs - scored
    if fa is None or not scored:
        return Verdict(inputs, scored, flagged, errors, fa.source if fa else "", float("nan"), None, None, [],
                       "" if fams else NO_FAMILIES)  # fmt: skip
    rng = fa.flagged_range(scored)
    ests = [estimate(scored, flagged, f, fa, seed=seed + i) for i, f in enumerate(fams)]
    return Verdict(inputs, scored, flagged, errors, fa.source, fa.expected_fpr * scored, rng, flagged > rng[1], ests,
                   "" if fams else NO_FAMILIES)  # fmt: skip
