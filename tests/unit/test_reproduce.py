"""The reproduction's local engine: the jobs' own stages and training, in this process without Ray."""

from __future__ import annotations

import pytest

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig
from raydetect.errors import RaydetectError
from raydetect.stages.reproduce import Reproduction, protocol_attribution, reproduce
from raydetect.store import read_output


def _run(tmp_path, protocol, eps):
    cfg = Reproduction(out=str(tmp_path), model=ModelConfig(name="digits_cnn"), protocols=(protocol,), eps=(eps,),
                       attribution=AttributionConfig(n_steps=8), features=FeatureConfig(quantiles=16), detectors=("lr",),
                       limit=160, engine="local", bootstrap=100, resources=ResourceConfig(batch_size=32))  # fmt: skip
    return reproduce(cfg)[0]


def test_corrected_protocol_pairs_stay_together(tmp_path, digits_model) -> None:  # digits_model: its cache
    r = _run(tmp_path, "corrected", 0.25)
    assert [row["mode"] for row in r.attack_rows] == ["untargeted", "random", "second"]
    assert all(row["max_linf"] <= 0.25 + 1.5 / 255 for row in r.attack_rows)  # 8-bit: within half a level and rounding
    rows = read_output(str(tmp_path / "corrected" / "features")).to_pylist()
    clean = [x for x in rows if x["kind"] == "clean"]
    assert len(clean) == len({x["pair_id"] for x in clean}) == r.n_images == 160  # one clean row per input, once
    assert sum(x["correct"] for x in clean) == r.n_correct
    by_attack: dict[str, list[str]] = {}
    for x in rows:
        if x["kind"] == "adversarial" and x["status"] == "ok":
            by_attack.setdefault(x["attack"], []).append(x["pair_id"])
    correct = {x["pair_id"] for x in clean if x["correct"]}
    for pairs in by_attack.values():  # at most one adversarial twin per correctly classified clean image
        assert len(pairs) == len(set(pairs)) and set(pairs) <= correct
    for row in r.detection_rows:
        assert row["n_test_clean"] >= row["n_test_adversarial"] > 0
        assert row["calibration_rows"] > 0 and row["fpr_range"][0] <= row["expected_fpr"] <= row["target_fpr"]
    assert {row["detector"] for row in r.detection_rows} == {"lr"}
    assert all(0.5 < row["auc"] <= 1.0 for row in r.detection_rows)
    assert r.bundle and (tmp_path / "corrected" / "detector" / "manifest.json").is_file()  # the local engine bundles too


def test_paper_protocol_is_one_step_explained_against_the_twin(tmp_path, digits_model) -> None:
    r = _run(tmp_path, "paper", 0.1)
    assert all(row["method"] == "paper_bim" and row["steps"] == 1 for row in r.attack_rows)
    assert protocol_attribution("paper", AttributionConfig()).baseline == "pair"


def test_corrected_protocol_refuses_the_pair_baseline() -> None:
    with pytest.raises(RaydetectError, match="leak"):
        protocol_attribution("corrected", AttributionConfig(baseline="pair"))
