"""Adding an attack is one file (tests/plugins/toy_attack.py) plus its registry entry: with nothing else
changed, the attack stage, the evaluation stage and the reports take it."""

from __future__ import annotations

import numpy as np
import pytest

from raydetect import registry
from raydetect.config import AttackConfig
from raydetect.detect import Detector
from raydetect.detect.evaluation import robustness_rows
from raydetect.outputs import EVALUATION_ROWS
from raydetect.report.document import to_markdown
from raydetect.report.experiments import evaluation_report
from raydetect.report.tables import attack_label
from raydetect.stages.attack import AttackStage
from raydetect.stages.evaluate import EvaluateStage
from raydetect.stages.rows import table_to_batch

TOY = registry.AttackSpec(
    "toy_sign_noise",
    "tests.plugins.toy_attack:SignNoise",
    "random signs of size eps (a test's toy)",
    "sign noise",
    cost=lambda c: 0,
)


@pytest.fixture
def toy(monkeypatch) -> AttackConfig:
    monkeypatch.setitem(registry.ATTACKS, TOY.name, TOY)
    return AttackConfig(method=TOY.name, eps=0.3).validate()


def digit_batch(digits_test, n: int = 12) -> dict[str, np.ndarray]:
    return {
        "id": np.array([f"d{i}" for i in range(n)], dtype=object), "path": np.array([""] * n, dtype=object),
        "label": digits_test.labels[:n].copy(), "image": digits_test.images[:n].copy(),
        "status": np.array(["ok"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
    }  # fmt: skip


def test_a_toy_attack_runs_through_attack_evaluate_and_a_report(toy, digits_model, digits_test, digits_bundle) -> None:
    batch = digit_batch(digits_test)
    attacked = table_to_batch(AttackStage(lambda: digits_model, [toy])(batch))
    adv = attacked["kind"] == "adversarial"
    assert adv.sum() > 0 and set(attacked["attack"][adv]) == {toy.name}
    assert (attacked["passes"][adv] == 0).all()  # what the toy spends, as its entry says

    det = Detector.load(str(digits_bundle))
    table = EvaluateStage(lambda: digits_model, [det], [toy])(batch)
    assert table.schema.equals(EVALUATION_ROWS.schema())
    rows = table.to_pylist()
    summary = robustness_rows(rows, det.threshold)
    assert [r["attack"] for r in summary] == [toy.name] and summary[0]["method"] == TOY.name
    assert attack_label(summary[0]) == "Untargeted, sign noise, eps=0.3"  # the label its entry gives
    text = to_markdown(evaluation_report(str(digits_bundle), "digits", summary, 12))
    row = next(line for line in text.splitlines() if toy.name in line)
    assert "| no |" in row  # knows nothing of the detector, as its entry says


def test_without_its_entry_the_toy_is_refused(digits_model) -> None:
    from raydetect.errors import RaydetectError

    with pytest.raises(RaydetectError, match="attack method must be one of"):
        AttackConfig(method=TOY.name, eps=0.3).validate()
