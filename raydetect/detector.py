"""Detectors over explanation descriptors: fitting, pair-aware splits, thresholds and metrics.

A clean image and its adversarial twin always land on the same side of every split (grouped by
``pair``), otherwise a detector can score well by recognising the image rather than the attack.
The decision threshold is chosen on held-out *clean* validation images for a target
false-positive rate, which is how a detector is operated in practice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raydetect.config import DetectorConfig
from raydetect.errors import RaydetectError

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lr": {"C": 1.0, "max_iter": 5000},
    "rf": {"n_estimators": 300, "min_samples_leaf": 1, "max_features": "sqrt"},
    "xgboost": {"n_estimators": 300, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
}


def make_estimator(kind: str, params: dict[str, Any] | None = None, seed: int = 0, n_jobs: int = 1) -> Any:
    """An unfitted sklearn-compatible classifier with ``predict_proba``."""
    merged = {**DEFAULT_PARAMS[kind], **(params or {})}
    if kind == "lr":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(random_state=seed, **merged))
    if kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **merged)
    if kind == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(random_state=seed, n_jobs=n_jobs, tree_method="hist", eval_metric="logloss", **merged)
    raise RaydetectError(f"unknown detector kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Splits


def pair_split(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (rest, held_out): ``fraction`` of the distinct pairs go to held_out, whole."""
    unique = np.unique(pairs)
    if len(unique) < 2:
        raise RaydetectError(f"need at least 2 image pairs to split; got {len(unique)}")
    rng = np.random.default_rng(seed)
    n_out = min(len(unique) - 1, max(1, int(round(fraction * len(unique)))))
    held = rng.choice(unique, size=n_out, replace=False)
    mask = np.isin(pairs, held)
    return ~mask, mask


def grouped_folds(pairs: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, test) index arrays with every pair inside one fold."""
    unique = np.unique(pairs)
    if len(unique) < k:
        raise RaydetectError(f"need at least {k} pairs for {k}-fold cross-validation; got {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {p: i % k for i, p in enumerate(order)}
    fold = np.array([fold_of[p] for p in pairs])
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


# --------------------------------------------------------------------------------------------
# Metrics


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


# --------------------------------------------------------------------------------------------
# Fit on the training side, threshold on validation clean images, evaluate on the test side


@dataclass
class FitResult:
    estimator: Any
    threshold: float
    evaluation: Evaluation
    train_rows: int
    val_rows: int


def fit_with_threshold(
    X: np.ndarray, y: np.ndarray, pairs: np.ndarray, cfg: DetectorConfig, n_jobs: int = 1
) -> tuple[Any, float]:
    """Fit on training pairs minus a validation share; pick the threshold on validation clean rows."""
    fit_mask, val_mask = pair_split(pairs, cfg.val_fraction, cfg.seed + 1)
    if len(np.unique(y[fit_mask])) < 2:
        raise RaydetectError("the training split holds only one class; add more images or pairs")
    est = make_estimator(cfg.kind, cfg.params, cfg.seed, n_jobs)
    est.fit(X[fit_mask], y[fit_mask])
    val_clean = X[val_mask & (y == 0)]
    threshold = threshold_for_fpr(est.predict_proba(val_clean)[:, 1], cfg.target_fpr)
    return est, threshold


def fit_and_evaluate(
    X: np.ndarray, y: np.ndarray, pairs: np.ndarray, cfg: DetectorConfig, n_boot: int = 1000, n_jobs: int = 1
) -> FitResult:
    """Split pairs into train/test, fit with a clean-validated threshold, evaluate on test."""
    train, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
    est, thr = fit_with_threshold(X[train], y[train], pairs[train], cfg, n_jobs)
    scores = est.predict_proba(X[test])[:, 1]
    ev = evaluate(y[test], scores, pairs[test], thr, n_boot, cfg.seed)
    return FitResult(est, thr, ev, int(train.sum()), int(test.sum()))
