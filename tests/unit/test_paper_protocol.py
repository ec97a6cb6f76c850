"""The paper's protocol on digits_cnn reproduces what STUDY.md documents for it.

Documented (STUDY.md's "paper protocol" table for digits, now removed with the sweep's lost result
files; `git show f835739:STUDY.md`): on the 353 correctly classified sklearn test digits
at eps = 0.1, the paper's "BIM" is one FGSM step and succeeds on 28% (untargeted), 5% (random
target) and 30% (second most confident) of them; with each image explained against its twin and
the sorted signed attributions as features, logistic regression separates clean from adversarial
at only about 0.70 ROC AUC (untargeted), while the corrected protocol (real BIM-10, own black
baseline) reaches 0.96 on the same images and descriptor.
"""

from __future__ import annotations

import pytest
import torch

from raydetect.attacks import make_attack
from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig
from raydetect.stages.reproduce import Reproduction, reproduce

DESCRIPTOR = FeatureConfig(descriptors=("signed_quantiles",), quantiles=64)
pytestmark = pytest.mark.slow  # about a minute: 353 digits, 16-step IG, both protocols


def _run(protocol, out):
    cfg = Reproduction(out=str(out), model=ModelConfig(name="digits_cnn"), protocols=(protocol,), eps=(0.1,),
                       attribution=AttributionConfig(n_steps=16, baseline="black"), features=DESCRIPTOR, detectors=("lr",),
                       engine="local", bootstrap=100)  # fmt: skip
    return reproduce(cfg)[0]


def _auc_by_mode(result):
    mode = {r["attack"]: r["mode"] for r in result.attack_rows}
    return {mode[r["attack"]]: r["auc"] for r in result.detection_rows}


@pytest.fixture(scope="module")
def paper(digits_model, tmp_path_factory):
    return _run("paper", tmp_path_factory.mktemp("paper"))


def test_paper_attack_success_matches_the_documented_rates(paper) -> None:
    rates = {r["mode"]: r["success_rate"] for r in paper.attack_rows}
    # The digits model is trained where the suite runs; CPUs differ in float order, so a digit or
    # two near the boundary can change sides (353 here, 354 on CI's machine).
    assert abs(paper.n_correct - 353) <= 5
    # Wide enough for a digits model retrained on another machine (random: 5% here, 8% in a loaded
    # test session), far below what a real 10-step BIM reaches (~100%).
    assert rates["untargeted"] == pytest.approx(0.28, abs=0.06)
    assert rates["random"] == pytest.approx(0.05, abs=0.05)
    assert rates["second"] == pytest.approx(0.30, abs=0.06)
    assert all(r["steps"] == 1 and r["method"] == "paper_bim" for r in paper.attack_rows)


def test_paper_bim_is_one_fgsm_step(digits_model, digits_test) -> None:
    x = torch.from_numpy(digits_test.images[:64])
    y = torch.from_numpy(digits_test.labels[:64])
    paper = make_attack(digits_model, AttackConfig(method="paper_bim", eps=0.1, steps=20))(x, y)
    fgsm = make_attack(digits_model, AttackConfig(method="fgsm", eps=0.1))(x, y)
    assert torch.equal(paper.adversarial, fgsm.adversarial)


def test_twin_baseline_detection_is_weak_and_the_corrected_protocol_is_not(paper, tmp_path) -> None:
    auc = _auc_by_mode(paper)
    assert 0.55 <= auc["untargeted"] <= 0.85
    corrected = _run("corrected", tmp_path)
    fixed = _auc_by_mode(corrected)
    assert fixed["untargeted"] >= 0.9
    assert fixed["untargeted"] > auc["untargeted"] + 0.1
