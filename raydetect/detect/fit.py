"""Fitting detectors in this process, choosing their threshold, evaluating them on held-out pairs.

``fit_head`` runs anywhere: here, or inside a Ray Train worker (``detect.ray_fit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raydetect.config import DetectorConfig
from raydetect.detect.heads import BoosterHead, ForestHead, Head, LinearHead
from raydetect.detect.metrics import Calibration, Evaluation, calibrate, evaluate
from raydetect.detect.splits import grouped_folds, pair_split
from raydetect.errors import RaydetectError

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lr": {"C": 1.0, "max_iter": 5000},
    "rf": {"n_estimators": 300, "min_samples_leaf": 1, "max_features": "sqrt"},
    "xgboost": {"num_boost_round": 300, "max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
}


def fit_head(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    device: str = "cpu",
) -> Head:
    """Fit one detector on descriptor rows X (N, D) with labels y (N,) in {0, 1}."""
    merged = {**DEFAULT_PARAMS[kind], **(params or {})}
    if len(np.unique(y)) < 2:
        raise RaydetectError("the training split holds only one class; add more images or pairs")
    if kind == "lr":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        lr = LogisticRegression(random_state=seed, **merged).fit(scaler.transform(X), y)
        return LinearHead(scaler.mean_, scaler.scale_, lr.coef_[0], float(lr.intercept_[0]))
    if kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return ForestHead.from_sklearn(RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **merged).fit(X, y))
    if kind == "xgboost":
        import xgboost as xgb

        rounds = int(merged.pop("num_boost_round"))
        booster_params = {
            "objective": "binary:logistic", "eval_metric": "logloss", "seed": seed, "nthread": n_jobs,
            "tree_method": "hist", "device": device, **merged,
        }  # fmt: skip
        booster = xgb.train(booster_params, xgb.DMatrix(X, label=y), num_boost_round=rounds)
        return BoosterHead(bytes(booster.save_raw("json")))
    raise RaydetectError(f"unknown detector kind {kind!r}")


@dataclass(frozen=True)
class FitJob:
    """One detector to fit: its kind, data and hyper-parameters."""

    kind: str
    X: np.ndarray
    y: np.ndarray
    params: dict[str, Any] | None = None
    seed: int = 0


# Fits a list of jobs and returns their heads in order: locally, or through Ray Train.
Fitter = Callable[[Sequence[FitJob]], list[Head]]


def fit_local(jobs: Sequence[FitJob]) -> list[Head]:
    return [fit_head(j.kind, j.X, j.y, j.params, j.seed) for j in jobs]


def clean_threshold(head: Head, X_clean: np.ndarray, target_fpr: float) -> Calibration:
    """The threshold for ``target_fpr`` on new clean images, chosen on these clean calibration rows."""
    return calibrate(head.predict_proba(X_clean), target_fpr)


CROSS_FITTED = "cross-fitted order statistic (out-of-fold clean scores)"


def cross_fitted(
    kind: str, X: np.ndarray, y: np.ndarray, pairs: np.ndarray, target_fpr: float, folds: int = 5,
    params: dict[str, Any] | None = None, seed: int = 0, fitter: Fitter = fit_local,
) -> tuple[Head, Calibration]:  # fmt: skip
    """A head fitted on every row, with its threshold chosen on out-of-fold clean scores.

    A split calibration on few images leaves few clean rows: 27 give a threshold at their largest
    score, whose FPR on new images is Beta(1, 27), so it usually lands far under the target and the
    detector flags less than it could. Here each clean row is scored by a head fitted on the other
    folds' pairs (a pair never scores itself), so every clean row calibrates and the final head
    trains on all of them. The Beta law is exact for each fold's head, only close for the final one
    (cross-conformal prediction): measure its FPR on held-out clean images.
    """
    plan = CrossFit.plan(kind, X, y, pairs, folds, params, seed)
    return plan.finish(fitter(plan.jobs), target_fpr)


@dataclass(frozen=True)
class CrossFit:
    """The fits :func:`cross_fitted` needs (one per fold, then the final head), so a caller can fit
    them in one batch with others (one Ray Train run), then :meth:`finish` them."""

    jobs: list[FitJob]
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, test) row indices per fold
    X: np.ndarray
    y: np.ndarray

    @classmethod
    def plan(cls, kind: str, X: np.ndarray, y: np.ndarray, pairs: np.ndarray, folds: int = 5,
             params: dict[str, Any] | None = None, seed: int = 0) -> CrossFit:  # fmt: skip
        splits = grouped_folds(pairs, folds, seed)
        jobs = [*(FitJob(kind, X[tr], y[tr], params, seed) for tr, _ in splits), FitJob(kind, X, y, params, seed)]
        return cls(jobs, splits, X, y)

    def finish(self, heads: Sequence[Head], target_fpr: float) -> tuple[Head, Calibration]:
        """(the final head, its threshold from the out-of-fold clean scores), from ``jobs``' heads in order."""
        *fold_heads, final = heads
        oof = np.full(len(self.y), np.nan)  # (N,) each row's score from the head that never saw its pair
        for head, (_, te) in zip(fold_heads, self.folds, strict=True):
            oof[te] = head.predict_proba(self.X[te])
        cal = calibrate(oof[self.y == 0], target_fpr)
        return final, Calibration(**{**cal.__dict__, "method": CROSS_FITTED})


@dataclass
class Split:
    """Row indices of one pair-aware split: fit, validation (the threshold's calibration), test."""

    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def pair_ids(self, pairs: np.ndarray) -> dict[str, list[str]]:
        """The images (pair ids) on each side, for the record and for checking disjointness."""
        return {side: sorted(set(pairs[getattr(self, side)].tolist())) for side in ("fit", "val", "test")}


def split_rows(pairs: np.ndarray, cfg: DetectorConfig) -> Split:
    """Test pairs first, then a validation share of the rest; every pair stays on one side.

    A pair's side depends only on its id and the seed, so every attack's rows and the bundle's
    agree, and the validation clean rows (all correctly classified images there) are never fitted.
    """
    train, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
    fit_mask, val_mask = pair_split(pairs[train], cfg.val_fraction, cfg.seed + 1)
    rest = np.flatnonzero(train)
    return Split(rest[fit_mask], rest[val_mask], np.flatnonzero(test))


@dataclass
class FitResult:
    model: Head
    calibration: Calibration
    evaluation: Evaluation
    train_rows: int
    val_rows: int
    test_labels: np.ndarray  # the held-out rows' labels and scores (ROC curves)
    test_scores: np.ndarray

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


def fit_and_evaluate(
    X: np.ndarray, y: np.ndarray, pairs: np.ndarray, cfg: DetectorConfig, n_boot: int = 1000, fitter: Fitter = fit_local
) -> FitResult:
    """Fit on training pairs, choose the threshold on validation clean rows, evaluate on test pairs."""
    s = split_rows(pairs, cfg)
    (model,) = fitter([FitJob(cfg.kind, X[s.fit], y[s.fit], cfg.params, cfg.seed)])
    cal = clean_threshold(model, X[s.val][y[s.val] == 0], cfg.target_fpr)
    scores = model.predict_proba(X[s.test])
    ev = evaluate(y[s.test], scores, pairs[s.test], cal.threshold, n_boot, cfg.seed)
    return FitResult(model, cal, ev, len(s.fit), len(s.val), y[s.test], scores)
