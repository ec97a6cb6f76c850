"""The audit verdict on synthetic score sets of known make-up: a real calibration (``calibrate``) on
clean scores, a detection rate measured on held-out adversarial scores, then audited datasets with
a known number of planted images, scored by the same threshold."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from raydetect.detect.evaluation import robustness_rows
from raydetect.detect.metrics import calibrate, evaluate
from raydetect.report.audit import summary_csv, verdict_blocks
from raydetect.report.document import Report, to_markdown
from raydetect.report.verdict import NO_EVIDENCE, NO_FAMILIES, FalseAlarms, Family, false_alarms, families, verdict

CLEAN, ADV = (2.0, 5.0), (5.0, 2.0)  # Beta laws of the detector's scores on clean and adversarial images
TARGET_FPR = 0.05
SIMULATIONS = 200
# With 200 datasets the coverage of a 95% interval has a standard deviation of about 1.5 points:
# the band is about three of them either side (the method is a little conservative near 0 and 1).
COVERAGE_BAND = (0.90, 0.99)


def world(rng: np.random.Generator, n_cal: int, n_measured: int) -> tuple[FalseAlarms, Family, float]:
    """A bundle's calibration and one attack's measured detection count, and the threshold."""
    cal = calibrate(rng.beta(*CLEAN, n_cal), TARGET_FPR)
    detected = int((rng.beta(*ADV, n_measured) > cal.threshold).sum())
    fa = false_alarms(cal.to_dict(), {})
    assert fa is not None
    return fa, Family("bim", detected, n_measured, "held-out test pairs"), cal.threshold


def audited(rng: np.random.Generator, n: int, planted: int, threshold: float) -> int:
    """Flags among ``n`` scored images, ``planted`` of them adversarial."""
    scores = np.r_[rng.beta(*CLEAN, n - planted), rng.beta(*ADV, planted)]
    return int((scores > threshold).sum())


@pytest.mark.parametrize(("n_cal", "n_measured", "n", "share"), [(400, 100, 2000, 0.1), (60, 30, 300, 0.3)])
def test_the_interval_covers_the_planted_share_at_about_its_nominal_rate(n_cal, n_measured, n, share) -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for i in range(SIMULATIONS):
        fa, fam, thr = world(rng, n_cal, n_measured)
        planted = round(share * n)
        v = verdict(n, n, audited(rng, n, planted, thr), fa, [fam], seed=i)
        (e,) = v.estimates
        lo, hi = e.images_range
        covered += lo <= planted <= hi
    assert COVERAGE_BAND[0] <= covered / SIMULATIONS <= COVERAGE_BAND[1], covered


def test_clean_datasets_read_as_no_evidence_and_their_interval_holds_zero() -> None:
    rng = np.random.default_rng(11)
    n, evidence, zero_in = 2000, 0, 0
    for i in range(SIMULATIONS):
        fa, fam, thr = world(rng, 400, 100)
        flagged = audited(rng, n, 0, thr)
        v = verdict(n + 5, n, flagged, fa, [fam], seed=i)
        evidence += bool(v.evidence)
        zero_in += v.estimates[0].images_range[0] == 0
        assert flagged > 0  # about 5% flagged by design, and yet:
    # One-sided at 2.5%: evidence on clean data is a false verdict, and rare.
    assert evidence / SIMULATIONS <= 0.05, evidence
    assert zero_in / SIMULATIONS >= 0.95, zero_in


def test_a_clean_dataset_report_says_no_evidence_not_n_suspicious_images() -> None:
    rng = np.random.default_rng(3)
    fa, fam, thr = world(rng, 400, 100)
    flagged = audited(rng, 2000, 0, thr)
    v = verdict(2000, 2000, flagged, fa, [fam])
    assert not v.evidence and flagged >= 50
    md = to_markdown(Report("raydetect audit", verdict_blocks(v)))
    first = md.splitlines()[2]  # after the title and a blank line
    assert first.startswith(f"**Verdict: {NO_EVIDENCE}.**") and f"{flagged} flagged" in first and "inside that range" in first
    assert "Estimated adversarial images" not in md and "at most" in md


def test_many_planted_images_read_as_evidence_with_an_interval_holding_the_truth() -> None:
    rng = np.random.default_rng(5)
    fa, fam, thr = world(rng, 400, 100)
    weak = Family("minimal", 40, 100, "robustness evaluation")  # caught less often: a larger estimate
    n, planted = 2000, 400
    v = verdict(n, n, audited(rng, n, planted, thr), fa, [fam, weak])
    assert v.evidence
    strong = v.estimates[0]
    assert strong.images_range[0] <= planted <= strong.images_range[1]
    assert abs(strong.images - planted) < 0.1 * planted
    assert v.estimates[1].images > strong.images  # the same flags, explained by an attack caught less often
    assert v.images_range == (strong.images_range[0], v.estimates[1].images_range[1])  # the range across attacks
    md = to_markdown(Report("raydetect audit", verdict_blocks(v)))
    assert "**Verdict: evidence of adversarial images" in md.splitlines()[2]
    assert f"Estimated adversarial images: {v.images_range[0]:,} to {v.images_range[1]:,}" in md
    assert "covers only attacks like those measured" in md


def test_an_attack_caught_at_the_false_alarm_rate_gets_no_estimate() -> None:
    fa = FalseAlarms(20, 380, "calibration")  # 5% expected
    v = verdict(1000, 1000, 300, fa, [Family("adaptive", 5, 100, "robustness"), Family("bim", 90, 100, "pairs")])
    blind, seen = v.estimates
    assert not blind.estimable and seen.estimable
    assert v.images_range == seen.images_range  # the blind attack would stretch it to everything
    assert "no estimate" in to_markdown(Report("r", verdict_blocks(v)))


def test_bundles_without_per_family_rates_say_so() -> None:
    rng = np.random.default_rng(0)
    y, s = np.r_[np.zeros(60), np.ones(60)], np.r_[rng.beta(*CLEAN, 60), rng.beta(*ADV, 60)]
    overall = evaluate(y, s, np.r_[np.arange(60), np.arange(60)], 0.6, n_boot=10).to_dict()
    old = {"overall": overall}  # no per_attack, no robustness: an older or a hand-made bundle
    assert families(old) == []
    fa = false_alarms({}, old)  # no calibration either: the held-out clean images' FPR stands in
    assert fa is not None and fa.a + fa.b == 61 and abs(fa.expected_fpr - overall["fpr"]) < 0.01
    v = verdict(500, 500, 40, fa, families(old))
    assert v.families_note == NO_FAMILIES and v.images_range is None
    assert f"no estimate ({NO_FAMILIES})" in to_markdown(Report("r", verdict_blocks(v)))
    # Nothing to set flags against: no verdict rather than a guess.
    none = verdict(500, 500, 40, false_alarms({}, {}), [])
    assert none.evidence is None and none.to_dict()["expected_false_alarms"] is None


def test_families_are_read_with_their_counts_from_what_training_and_evaluation_record() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(50), np.ones(37)]
    s = np.r_[rng.beta(*CLEAN, 50), rng.beta(*ADV, 37)]
    ev = evaluate(y, s, np.r_[np.arange(50), np.arange(37)], 0.5, n_boot=10).to_dict()
    rows = [{"kind": "clean", "status": "ok", "correct": True, "score": float(c), "attack": ""} for c in s[:50]]
    rows += [
        {"kind": "adversarial", "status": "ok", "correct": True, "score": float(a), "attack": "cw-untargeted-0.03",
         "method": "cw", "mode": "untargeted", "eps": 0.03, "success": i % 4 != 0, "passes": 1}
        for i, a in enumerate(s[50:])
    ]  # fmt: skip
    robust = robustness_rows(rows, 0.5)
    found = {f.name: f for f in families({"per_attack": {"bim-untargeted-0.03": ev}, "robustness": robust})}
    assert found["bim-untargeted-0.03"] == Family("bim-untargeted-0.03", int((s[50:] > 0.5).sum()), 37, "held-out test pairs")
    succeeded = s[50:][[i % 4 != 0 for i in range(37)]]
    assert found["cw-untargeted-0.03"] == Family("cw-untargeted-0.03", int((succeeded > 0.5).sum()), len(succeeded),
                                                 "robustness evaluation")  # fmt: skip


def test_summary_csv_holds_the_verdicts_figures() -> None:
    fa = FalseAlarms(21, 380, "the bundle's calibration on 400 clean images")
    v = verdict(1003, 1000, 300, fa, [Family("bim", 95, 100, "pairs")])
    rows = {r["figure"]: r for r in csv.DictReader(io.StringIO(summary_csv(v).decode()))}
    assert (rows["scored"]["value"], rows["flagged"]["value"], rows["errors"]["value"]) == ("1000", "300", "3")
    assert (int(rows["expected_false_alarms"]["low"]), int(rows["expected_false_alarms"]["high"])) == v.false_alarm_range
    assert (int(rows["adversarial_images"]["low"]), int(rows["adversarial_images"]["high"])) == v.images_range
    assert rows["adversarial_images_if_like:bim"]["value"] == str(v.estimates[0].images)
    assert rows["verdict"]["value"] == v.headline == v.to_dict()["headline"]
