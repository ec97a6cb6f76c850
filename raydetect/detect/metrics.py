"""Detection metrics: ROC AUC, TPR at a fixed FPR, thresholds on clean images, intervals.

The decision threshold is chosen on held-out *clean* images for a target false-positive rate,
which is how a detector is operated in practice. It is a split-conformal order statistic of the
clean calibration scores, so its FPR on new clean images has a known distribution: the bundle
states the target, the expected FPR and a 95% range, all from the number of calibration rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raydetect.errors import RaydetectError

log = logging.getLogger(__name__)

LEVEL = 0.95  # every interval here is a 95% one
# A bootstrap interval is reported only if at most this share of resamples gave a defined value
# (a resample with one class absent has no ROC AUC); more would make it a conditional interval.
MAX_FAILED_SHARE = 0.025
TOO_FEW_CLEAN = "n/a (too few clean rows)"


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, scores))


def min_clean_rows(fpr: float) -> int:
    """Clean rows needed before "TPR at ``fpr`` FPR" means that: at least one clean row may exceed."""
    return math.ceil(1 / fpr - 1e-9)


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of adversarial inputs flagged when the threshold lets ``fpr`` of clean ones through.

    NaN when it cannot be estimated: no rows of a class, or fewer than ``1/fpr`` clean rows (then
    ``floor(fpr * n) = 0`` and the number would really be the TPR at 0% FPR).
    """
    clean, adv = scores[y == 0], scores[y == 1]
    if len(clean) == 0 or len(adv) == 0 or (fpr > 0 and len(clean) < min_clean_rows(fpr)):
        return float("nan")
    thr = threshold_for_fpr(clean, fpr)
    return float((adv > thr).mean())


def threshold_for_fpr(clean_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t with mean(clean > t) <= target_fpr on these very scores (flag when score > t).

    The empirical rule, for measuring TPR at a given FPR on a test set. To *choose* a threshold
    for new images use :func:`calibrate`.
    """
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if len(s) == 0:
        raise RaydetectError("no clean validation images to choose a threshold on")
    k = int(np.floor(target_fpr * len(s)))  # how many clean scores may exceed the threshold
    return float(s[len(s) - 1 - k]) if k < len(s) else float(s[0])


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on ``rows`` clean calibration scores, and what it promises on new clean images.

    The threshold is the ``rank``-th smallest calibration score, rank = ceil((n+1)(1-target)):
    for exchangeable clean images (continuous scores), the FPR of that threshold on new clean
    images is distributed Beta(n+1-rank, rank): its mean ``expected_fpr`` is at most the target,
    and ``fpr_range`` holds it with 95% probability. Ties only lower the FPR.
    """

    threshold: float
    target_fpr: float
    rows: int
    rank: int
    expected_fpr: float
    fpr_range: tuple[float, float]
    achievable: bool  # False: too few rows to promise the target; the threshold is the largest score
    # How the calibration scores were made: held-out rows of a split, or out-of-fold (cross-fitted).
    method: str = "split-conformal order statistic"

    @property
    def beta(self) -> tuple[int, int]:
        """(a, b) of the Beta law of this threshold's FPR on new clean images."""
        return self.rows + 1 - self.rank, self.rank

    def flagged_range(self, n_new: int, level: float = LEVEL) -> tuple[int, int]:
        """Central ``level`` interval of how many of ``n_new`` new clean images this threshold flags
        (beta-binomial: the calibration draw and the new images' draw together)."""
        from scipy.stats import betabinom

        a, b = self.beta
        lo, hi = betabinom.ppf([(1 - level) / 2, (1 + level) / 2], n_new, a, b)
        return int(lo), int(hi)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fpr_range": list(self.fpr_range), "level": LEVEL}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """From a bundle's ``calibration`` (extra keys ignored)."""
        return cls(float(d["threshold"]), float(d["target_fpr"]), int(d["rows"]), int(d["rank"]), float(d["expected_fpr"]),
                   (float(d["fpr_range"][0]), float(d["fpr_range"][1])), bool(d["achievable"]),
                   str(d.get("method", "split-conformal order statistic")))  # fmt: skip


def calibrate(clean_scores: np.ndarray, target_fpr: float) -> Calibration:
    """Choose the threshold for ``target_fpr`` on clean calibration scores (flag when score > threshold)."""
    from scipy.stats import beta

    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise RaydetectError("no clean validation images to choose a threshold on")
    rank = math.ceil((n + 1) * (1 - target_fpr) - 1e-9)
    achievable = rank <= n
    if not achievable:
        rank = n
        log.warning(
            "only %d clean calibration rows: a %.1f%% false-positive target needs at least %d; the threshold is the largest "
            "clean score and its FPR may exceed the target", n, 100 * target_fpr, math.ceil(1 / target_fpr - 1),
        )  # fmt: skip
    a, b = n + 1 - rank, rank
    lo, hi = beta.ppf([(1 - LEVEL) / 2, (1 + LEVEL) / 2], a, b)
    return Calibration(float(s[rank - 1]), target_fpr, n, rank, a / (n + 1), (float(lo), float(hi)), achievable)


def binomial_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a rate measured as k of n."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def balanced_accuracy(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Mean of TPR and 1-FPR at ``threshold``: both classes weigh the same, however many rows each has
    (a bundle trained on k attacks has k adversarial rows per clean one). NaN with a class absent."""
    flag = scores > threshold
    clean, adv = y == 0, y == 1
    if not clean.any() or not adv.any():
        return float("nan")
    return float(0.5 * (flag[adv].mean() + (~flag[clean]).mean()))


# Kept for callers that want plain accuracy on a balanced set (the paper's).
def accuracy(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float(((scores > threshold).astype(int) == y).mean())


@dataclass(frozen=True)
class BootstrapCI:
    """A 95% percentile interval over pair resamples, with how many resamples had no defined value."""

    low: float
    high: float
    resamples: int
    failed: int

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


def bootstrap(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000, seed: int = 0,
) -> BootstrapCI:  # fmt: skip
    """Resample whole pairs with replacement. Resamples where ``metric`` is not finite (say, no
    adversarial row drawn) are counted in ``failed``; past ``MAX_FAILED_SHARE`` of them the
    interval is NaN rather than an interval over the lucky resamples only."""
    if n_boot <= 0 or len(y) == 0:
        return BootstrapCI(float("nan"), float("nan"), 0, 0)
    unique, inverse = np.unique(pairs, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(len(unique), size=len(unique))
        idx = np.concatenate([rows_of[i] for i in pick])
        v = metric(y[idx], scores[idx])
        if np.isfinite(v):
            values.append(v)
    failed = n_boot - len(values)
    if not values or failed > MAX_FAILED_SHARE * n_boot:
        return BootstrapCI(float("nan"), float("nan"), n_boot, failed)
    lo, hi = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return BootstrapCI(float(lo), float(hi), n_boot, failed)


def bootstrap_ci(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, metric: Any, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``metric(y, scores)`` resampling whole pairs (see :func:`bootstrap`);
    logs how many resamples failed, if any."""
    ci = bootstrap(y, scores, pairs, metric, n_boot, seed)
    if ci.failed:
        log.warning("bootstrap: %d of %d resamples had no defined value%s", ci.failed, ci.resamples,
                    "; interval not reported" if math.isnan(ci.low) else "")  # fmt: skip
    return ci.bounds


@dataclass
class Evaluation:
    """Detection quality on held-out images. Rates are fractions in [0, 1].

    Test rows are every correctly classified clean image of the test split and the successful
    adversarial images of its pairs, so clean and adversarial counts differ: ``accuracy`` is
    balanced (mean of TPR and 1-FPR), ROC AUC, TPR and FPR do not depend on the ratio.
    ``tpr_at_*fpr`` is NaN when there are too few clean rows to estimate it.
    """

    n_test_pairs: int  # distinct images (pair ids) in the test split
    n_test_rows: int
    n_test_clean: int
    n_test_adversarial: int
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1fpr: float
    tpr_at_5fpr: float
    threshold: float
    accuracy: float  # balanced, at the chosen threshold
    accuracy_ci: tuple[float, float]
    accuracy_at_half: float  # balanced, at score > 0.5 (the paper's accuracy, on its balanced pairs)
    fpr: float  # measured on held-out clean images at the chosen threshold
    fpr_ci: tuple[float, float]  # Clopper-Pearson
    tpr: float
    tpr_ci: tuple[float, float]
    bootstrap: dict[str, Any]  # resamples, and failed resamples per interval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0
) -> Evaluation:
    clean, adv = scores[y == 0], scores[y == 1]
    auc_ci = bootstrap(y, scores, pairs, roc_auc, n_boot, seed)
    acc_ci = bootstrap(y, scores, pairs, lambda a, b: balanced_accuracy(a, b, threshold), n_boot, seed)
    fp, tp = int((clean > threshold).sum()), int((adv > threshold).sum())
    return Evaluation(
        n_test_pairs=len(np.unique(pairs)),
        n_test_rows=len(y),
        n_test_clean=len(clean),
        n_test_adversarial=len(adv),
        auc=roc_auc(y, scores),
        auc_ci=auc_ci.bounds,
        tpr_at_1fpr=tpr_at_fpr(y, scores, 0.01),
        tpr_at_5fpr=tpr_at_fpr(y, scores, 0.05),
        threshold=threshold,
        accuracy=balanced_accuracy(y, scores, threshold),
        accuracy_ci=acc_ci.bounds,
        accuracy_at_half=balanced_accuracy(y, scores, 0.5),
        fpr=fp / len(clean) if len(clean) else float("nan"),
        fpr_ci=binomial_interval(fp, len(clean)),
        tpr=tp / len(adv) if len(adv) else float("nan"),
        tpr_ci=binomial_interval(tp, len(adv)),
        bootstrap={"resamples": auc_ci.resamples, "failed": {"auc": auc_ci.failed, "accuracy": acc_ci.failed}},
    )
