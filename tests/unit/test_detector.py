from __future__ import annotations

import numpy as np
import pytest

from raydetect.config import DetectorConfig
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.fit import fit_and_evaluate, fit_head
from raydetect.detect.metrics import bootstrap_ci, evaluate, roc_auc, threshold_for_fpr, tpr_at_fpr
from raydetect.detect.splits import grouped_folds, pair_split


def test_pair_split_never_straddles() -> None:
    pairs = np.repeat(np.arange(50), 2)
    rest, held = pair_split(pairs, 0.3, seed=1)
    assert not set(pairs[rest]) & set(pairs[held])
    assert len(set(pairs[held])) == 15
    assert rest.sum() + held.sum() == len(pairs)


def test_grouped_folds_cover_every_row_once() -> None:
    pairs = np.repeat(np.arange(23), 2)
    seen = np.zeros(len(pairs), int)
    for train, test in grouped_folds(pairs, 5, seed=0):
        assert not set(pairs[train]) & set(pairs[test])
        seen[test] += 1
    assert (seen == 1).all()


def test_threshold_gives_the_target_fpr_on_held_out_clean(rng) -> None:
    val = rng.normal(size=4000)
    held_out = rng.normal(size=20000)
    thr = threshold_for_fpr(val, 0.05)
    assert (val > thr).mean() <= 0.05
    assert (held_out > thr).mean() == pytest.approx(0.05, abs=0.01)


def test_metrics_on_known_scores() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8])
    assert roc_auc(y, s) == pytest.approx(15 / 16)
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.75)
    ev = evaluate(y, s, np.array([0, 1, 2, 3, 0, 1, 2, 3]), threshold=0.5, n_boot=200)
    assert ev.accuracy == pytest.approx(7 / 8) and ev.fpr == 0 and ev.tpr == pytest.approx(0.75)
    assert ev.auc_ci[0] <= ev.auc <= ev.auc_ci[1]


def test_bootstrap_interval_narrows_with_more_pairs(rng) -> None:
    def make(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = np.tile([0, 1], n)
        s = rng.normal(size=2 * n) + y
        return y, s, np.repeat(np.arange(n), 2)

    small = bootstrap_ci(*make(30), roc_auc, n_boot=300)
    large = bootstrap_ci(*make(600), roc_auc, n_boot=300)
    assert (large[1] - large[0]) < (small[1] - small[0])


@pytest.mark.parametrize("kind", ["lr", "rf", "xgboost"])
def test_detectors_separate_separable_pairs(kind, rng) -> None:
    n = 120
    X = np.concatenate([rng.normal(0, 1, (n, 5)), rng.normal(2.5, 1, (n, 5))])
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    pairs = np.r_[np.arange(n), np.arange(n)]
    fit = fit_and_evaluate(X, y, pairs, DetectorConfig(kind=kind), n_boot=100)
    assert fit.evaluation.auc > 0.95
    assert fit.evaluation.fpr <= 0.2


def test_feature_rows_in_any_file_order_fit_the_same_forest(rng) -> None:
    # Ray writes part files in a different order each run; the fitted detector must not care.
    import pyarrow as pa

    n = 60
    X = rng.normal(size=(2 * n, 6)).astype(np.float32)
    X[n:] += 0.7
    kind = ["clean"] * n + ["adversarial"] * n
    pair = [f"p{i:03d}" for i in range(n)] * 2
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 6)
    table = pa.table(
        {"id": [f"{k}-{p}" for k, p in zip(kind, pair, strict=True)], "kind": kind, "pair_id": pair,
         "attack": [""] * n + ["x"] * n, "status": ["ok"] * (2 * n), "mode": ["m"] * (2 * n),
         "eps": [0.1] * (2 * n), "features": feats}
    )  # fmt: skip
    shuffled = table.take(pa.array(rng.permutation(2 * n)))
    probs = []
    for t in (table, shuffled):
        Xa, ya, _ = FeatureSet.from_table(t).for_attacks(["x"])
        probs.append(fit_head("rf", Xa, ya, seed=0).predict_proba(X))
    np.testing.assert_array_equal(probs[0], probs[1])
