from __future__ import annotations

import numpy as np
import pytest

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig
from raydetect.errors import RaydetectError
from raydetect.images import load_digits_images
from raydetect.reproduce import protocol_attacks, protocol_attribution, reproduce_local


@pytest.fixture(scope="module")
def images():
    return load_digits_images("test", limit=160)


def _run(images, digits_model, protocol, eps):
    return reproduce_local(
        images,
        ModelConfig(name="digits_cnn"),
        protocol_attacks(protocol, eps, steps=10),
        AttributionConfig(n_steps=8),
        FeatureConfig(quantiles=16),
        detectors=("lr",),
        protocol=protocol,
        model=digits_model,
        n_boot=100,
    )


def test_corrected_protocol_pairs_stay_together(images, digits_model) -> None:
    r = _run(images, digits_model, "corrected", 0.25)
    assert [row["mode"] for row in r.attack_rows] == ["untargeted", "random", "second"]
    assert all(row["max_linf"] <= 0.25 + 1e-6 for row in r.attack_rows)
    n_correct = r.n_correct
    for pf in r.features:
        # every correctly classified image has one clean row (thresholds and FPR need all of them),
        # and at most one adversarial row, beside its clean twin
        assert (pf.y == 0).sum() == n_correct == len(np.unique(pf.pairs[pf.y == 0]))
        assert set(pf.pairs[pf.y == 1]) <= set(pf.pairs[pf.y == 0])
        assert len(np.unique(pf.pairs[pf.y == 1])) == (pf.y == 1).sum()
    for row in r.detection_rows:
        assert row["n_test_clean"] >= row["n_test_adversarial"] > 0
        assert row["calibration_rows"] > 0 and row["fpr_range"][0] <= row["expected_fpr"] <= row["target_fpr"]
    assert {row["detector"] for row in r.detection_rows} == {"lr"}
    assert all(0.0 <= row["auc"] <= 1.0 for row in r.detection_rows)


def test_paper_protocol_is_one_step_explained_against_the_twin(images, digits_model) -> None:
    r = _run(images, digits_model, "paper", 0.1)
    assert all(row["method"] == "paper_bim" and row["steps"] == 1 for row in r.attack_rows)
    assert protocol_attribution("paper", AttributionConfig()).baseline == "pair"


def test_corrected_protocol_refuses_the_pair_baseline() -> None:
    with pytest.raises(RaydetectError, match="leak"):
        protocol_attribution("corrected", AttributionConfig(baseline="pair"))
