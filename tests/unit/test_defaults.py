"""raydetect's defaults are the design the hardening study chose, and README's figures are that design's rows."""

from __future__ import annotations

from raydetect.attacks.suite import attack_grid, mixed_strengths
from raydetect.config import AttributionConfig, DetectorConfig, FeatureConfig
from tests.helpers import tables_script


def test_the_defaults_are_the_chosen_design() -> None:
    tables = tables_script()
    hardening = tables._hardening()
    name, calibration = hardening.CHOSEN
    design = hardening.DESIGNS[name]
    assert design.attribution == AttributionConfig()
    assert design.features == FeatureConfig()
    assert DetectorConfig().calibration == calibration
    # What `raydetect attack` / `reproduce` train on by default, at the study's eps.
    eps = [hardening.EPS]
    default = attack_grid("bim", None, eps, 10, None, 0) + mixed_strengths(None, eps, 0)
    assert sorted(a.name for a in default) == sorted(a.name for a in design.train_attacks)
    assert set(default) == set(design.train_attacks)
    assert (name, "confirmation", calibration) == tables.README_DESIGN


def test_the_default_strengths_depend_on_the_plain_attack() -> None:
    """Plain BIM gets the wide mix; another method gets nothing added (a PGD run makes PGD adversarials)."""
    wide = [a.name for a in mixed_strengths(None, [4 / 255], 0)]
    assert wide == ["bim-second-4/255-stop", "bim-random-4/255-stop", "bim-untargeted-4/255-k2",
                    "bim-untargeted-0.1", "bim-random-0.1", "bim-second-0.1"]  # fmt: skip
    assert mixed_strengths(None, [4 / 255], 0, plain_bim=False) == []
    # eps 0.1 already asked for: not twice; --mode narrows the 0.1 attacks too.
    once = ["bim-second-0.1-stop", "bim-random-0.1-stop", "bim-untargeted-0.1-k2"]
    assert [a.name for a in mixed_strengths("wide", [0.1], 0)] == once
    assert [a.name for a in mixed_strengths("wide", [8 / 255], 0, modes=["second"])][-1:] == ["bim-second-0.1"]


def test_attacks_on_a_detector_average_over_its_random_views_unless_told() -> None:
    from raydetect.attacks.suite import default_eot

    assert default_eot(AttributionConfig().jitter) == 2  # the default bundle's views draw secret strengths
    assert default_eot(0.0) == 1  # nothing random to average over
    assert default_eot(0.5, 5) == 5 and default_eot(0.0, 3) == 3  # --eot wins
