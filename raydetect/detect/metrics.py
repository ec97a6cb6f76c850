"""Detection metrics: ROC AUC, TPR at a fixed FPR, thresholds on clean images, pair bootstrap.

The decision threshold is chosen on held-out *clean* images for a target false-positive rate,
which is how a detector is operated in practice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raydetect.errors import RaydetectError


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, scores))


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of adversarial inputs flagged when the threshold lets ``fpr`` of clean ones through."""
    clean, adv = scores[y == 0], scores[y == 1]
    if len(clean) == 0 or len(adv) == 0:
        return float("nan")
    thr = threshold_for_fpr(clean, fpr)
    return float((adv > thr).mean())


def threshold_for_fpr(clean_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t with mean(clean > t) <= target_fpr (flag when score > t)."""
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if len(s) == 0:
        raise RaydetectError("no clean validation images to choose a threshold on")
    k = int(np.floor(target_fpr * len(s)))  # how many clean scores may exceed the threshold
    return float(s[len(s) - 1 - k]) if k < len(s) else float(s[0])


def accuracy(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float(((scores > threshold).astype(int) == y).mean())


def bootstrap_ci(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, metric: Any, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``metric(y, scores)`` resampling whole pairs with replacement."""
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
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Evaluation:
    """Detection quality on held-out pairs. Rates are fractions in [0, 1]."""

    n_test_pairs: int
    n_test_rows: int
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1fpr: float
    tpr_at_5fpr: float
    threshold: float
    accuracy: float  # at the chosen threshold
    accuracy_ci: tuple[float, float]
    accuracy_at_half: float  # at score > 0.5, the paper's "accuracy"
    fpr: float  # measured on held-out clean images at the chosen threshold
    tpr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0
) -> Evaluation:
    clean, adv = scores[y == 0], scores[y == 1]
    return Evaluation(
        n_test_pairs=len(np.unique(pairs)),
        n_test_rows=len(y),
        auc=roc_auc(y, scores),
        auc_ci=bootstrap_ci(y, scores, pairs, roc_auc, n_boot, seed),
        tpr_at_1fpr=tpr_at_fpr(y, scores, 0.01),
        tpr_at_5fpr=tpr_at_fpr(y, scores, 0.05),
        threshold=threshold,
        accuracy=accuracy(y, scores, threshold),
        accuracy_ci=bootstrap_ci(y, scores, pairs, lambda a, b: accuracy(a, b, threshold), n_boot, seed),
        accuracy_at_half=accuracy(y, scores, 0.5),
        fpr=float((clean > threshold).mean()) if len(clean) else float("nan"),
        tpr=float((adv > threshold).mean()) if len(adv) else float("nan"),
    )
