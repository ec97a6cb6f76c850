from __future__ import annotations

import numpy as np
import pytest

from raydetect.config import DetectorConfig
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.fit import CROSS_FITTED, cross_fitted, fit_and_evaluate, fit_head
from raydetect.detect.metrics import (
    Calibration,
    accuracy,
    balanced_accuracy,
    bootstrap,
    bootstrap_ci,
    calibrate,
    evaluate,
    roc_auc,
    threshold_for_fpr,
    tpr_at_fpr,
)
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


# Honest statistics ----------------------------------------------------------------------------


def test_calibrated_threshold_keeps_its_promise_on_new_clean_images() -> None:
    """Over many calibration draws, the FPR on new clean images averages at most the target, lands in
    the stated 95% range about 95% of the time; the empirical rule it replaced overshoots on few rows."""
    rng = np.random.default_rng(0)
    target, n, fresh = 0.05, 58, rng.normal(size=200_000)
    sorted_fresh = np.sort(fresh)

    def fpr(t: float) -> float:
        return 1 - np.searchsorted(sorted_fresh, t, side="right") / len(fresh)

    cal_fpr, old_fpr, inside = [], [], []
    for _ in range(2000):
        scores = rng.normal(size=n)
        cal = calibrate(scores, target)
        cal_fpr.append(fpr(cal.threshold))
        old_fpr.append(fpr(threshold_for_fpr(scores, target)))
        inside.append(cal.fpr_range[0] <= cal_fpr[-1] <= cal.fpr_range[1])
    cal = calibrate(rng.normal(size=n), target)
    assert cal.rows == n and cal.achievable and cal.expected_fpr <= target
    assert np.mean(cal_fpr) == pytest.approx(cal.expected_fpr, abs=0.003)  # its stated mean, at most the target
    assert np.mean(old_fpr) > target  # the rule it replaced: (floor(0.05 n) + 1) / (n + 1) > 5%
    assert 0.93 <= np.mean(inside) <= 0.97
    # and the stated range narrows with more calibration rows
    wide, narrow = calibrate(rng.normal(size=60), target).fpr_range, calibrate(rng.normal(size=600), target).fpr_range
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2


def test_cross_fitted_threshold_calibrates_on_every_clean_row() -> None:
    """Out-of-fold clean scores give a threshold whose FPR on new clean images stays near the target,
    using every clean row; calibrating on the head's own training rows (the broken shortcut) does not."""
    rng = np.random.default_rng(0)
    d, n, target = 30, 70, 0.05
    fresh = rng.normal(size=(20_000, d))
    pairs, y = np.r_[np.arange(n), np.arange(n)], np.r_[np.zeros(n), np.ones(n)].astype(int)
    crossed, in_fold = [], []
    for _ in range(30):
        X = np.concatenate([rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.25])
        head, cal = cross_fitted("lr", X, y, pairs, target)
        fresh_scores = head.predict_proba(fresh)
        crossed.append((fresh_scores > cal.threshold).mean())
        in_fold.append((fresh_scores > calibrate(head.predict_proba(X[y == 0]), target).threshold).mean())
    assert cal.rows == n and cal.achievable and cal.method == CROSS_FITTED
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert 0.02 <= np.mean(crossed) <= target + 0.01
    assert np.mean(in_fold) > 2 * target  # in-sample clean scores are too low, so the threshold is too


def test_too_few_calibration_rows_are_said_so() -> None:
    cal = calibrate(np.arange(10.0), 0.05)
    assert not cal.achievable and cal.threshold == 9.0 and cal.expected_fpr > 0.05


def test_flagged_range_covers_new_clean_images(rng) -> None:
    """The beta-binomial range of flagged clean images (calibration draw and new draw together)."""
    hits = 0
    for _ in range(400):
        cal = calibrate(rng.normal(size=100), 0.05)
        lo, hi = cal.flagged_range(120, 0.95)
        hits += lo <= int((rng.normal(size=120) > cal.threshold).sum()) <= hi
    assert hits / 400 >= 0.93


def test_tpr_at_fpr_needs_enough_clean_rows(rng) -> None:
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    s = rng.normal(size=120) + y
    assert np.isnan(tpr_at_fpr(y, s, 0.01))  # floor(0.6) = 0: it would be TPR at 0% FPR
    assert np.isfinite(tpr_at_fpr(y, s, 0.05))
    ev = evaluate(y, s, np.r_[np.arange(60), np.arange(60)], 0.5, n_boot=50)
    assert np.isnan(ev.tpr_at_1fpr) and ev.n_test_clean == 60
    from raydetect.report.tables import table2

    assert "n/a (too few clean rows)" in table2([{"attack": "a", "detector": "lr", **ev.to_dict()}]).rows[0]


def test_balanced_accuracy_does_not_depend_on_the_class_ratio(rng) -> None:
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    s = rng.normal(size=100) + 1.5 * y
    k = 4  # a bundle trained on k attacks sees k adversarial rows per clean one
    yk, sk = np.r_[y[:50], np.tile(y[50:], k)], np.r_[s[:50], np.tile(s[50:], k)]
    assert balanced_accuracy(yk, sk, 0.7) == pytest.approx(balanced_accuracy(y, s, 0.7))
    assert accuracy(yk, sk, 0.7) != pytest.approx(accuracy(y, s, 0.7))
    ev = evaluate(yk, sk, np.r_[np.arange(50), np.tile(np.arange(50), k)], 0.7, n_boot=50)
    assert ev.accuracy == pytest.approx(balanced_accuracy(y, s, 0.7))
    assert ev.fpr_ci[0] <= ev.fpr <= ev.fpr_ci[1] and ev.tpr_ci[0] <= ev.tpr <= ev.tpr_ci[1]


def test_bootstrap_counts_failed_resamples_and_withholds_a_lucky_interval() -> None:
    # Four clean-only images and one pair: most resamples draw no adversarial row, so no ROC AUC.
    y = np.array([0, 0, 0, 0, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    pairs = np.array(["a", "b", "c", "d", "e", "e"])
    ci = bootstrap(y, s, pairs, roc_auc, n_boot=200)
    assert ci.failed > 0.2 * 200 and np.isnan(ci.low) and np.isnan(ci.high)
    ev = evaluate(y, s, pairs, 0.5, n_boot=200)
    assert ev.bootstrap["failed"]["auc"] == ci.failed and np.isnan(ev.auc_ci[0])
    # A few failures are kept, counted and reported.
    rng = np.random.default_rng(0)
    y2 = np.r_[np.zeros(40, int), np.ones(3, int)]
    s2 = rng.normal(size=43) + y2
    p2 = np.r_[np.arange(40), np.arange(3)].astype(str)
    ci2 = bootstrap(y2, s2, p2, roc_auc, n_boot=400)
    assert 0 < ci2.failed <= 0.025 * 400 and ci2.low < ci2.high
    from raydetect.report.tables import bootstrap_note

    note = bootstrap_note([{"attack": "a", "detector": "lr", "bootstrap": {"resamples": 400, "failed": {"auc": ci2.failed}}}])
    assert note is not None and f"{ci2.failed} of 400" in note.text


def test_round_rows_keep_a_rounds_adversarials_apart_from_every_other_attack() -> None:
    """A round's rows join the training rows: its clean rows (already there under the same id) go, its
    adversarials get the round in their attack name and id, so a second round adds rows of its own."""
    import pyarrow as pa

    from raydetect.detect.training import is_round_attack, round_rows

    table = pa.table({
        "id": ["a", "a|adaptive", "b", "b|adaptive"], "pair_id": ["a", "a", "b", "b"],
        "kind": ["clean", "adversarial", "clean", "adversarial"], "attack": ["", "adaptive", "", "adaptive"],
        "status": ["ok", "ok", "ok", "skipped"], "features": [[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], None],
    })  # fmt: skip
    one, two = round_rows(table, 1), round_rows(table, 2)
    assert one.column("id").to_pylist() == ["a|adaptive-round1", "b|adaptive-round1"]
    assert set(one.column("attack").to_pylist()) == {"adaptive-round1"}
    assert one.column("pair_id").to_pylist() == ["a", "b"] and one.column("status").to_pylist() == ["ok", "skipped"]
    both = FeatureSet.from_table(pa.concat_tables([table, one, two]))
    assert both.attacks == ["adaptive", "adaptive-round1", "adaptive-round2"]
    _, y, pairs = both.for_attacks(["adaptive-round2"])
    assert y.tolist() == [0, 1, 0] and pairs.tolist() == ["a", "a", "b"]  # every clean row once, beside the round's
    assert [is_round_attack(a) for a in both.attacks] == [False, True, True]
