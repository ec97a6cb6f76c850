"""The registries are the one place an attack, explainer or reader is named, and every consumer reads them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from raydetect import registry
from raydetect.attacks import make_attack
from raydetect.config import AttackConfig, AttributionConfig

PKG = Path(__file__).resolve().parents[2] / "raydetect"
# String constants equal to an attack name that mean something else.
OTHER_MEANINGS = {
    ("report/audit.py", "adaptive"),  # the metrics key under which old bundles keep their adaptive record
}


def spelled(names: set[str]) -> list[tuple[str, int, str]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "registry.py":
            continue
        rel = str(path.relative_to(PKG))
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in names
                and (rel, node.value) not in OTHER_MEANINGS
            ):
                out.append((rel, node.lineno, node.value))
    return out


def test_attack_names_are_spelled_only_in_their_registry_entry() -> None:
    assert spelled(set(registry.ATTACKS)) == []
    # The check itself finds a spelling: the registry's own entries.
    tree = ast.parse((PKG / "registry.py").read_text())
    assert {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)} >= set(registry.ATTACKS)


def test_config_and_costs_read_the_registry() -> None:
    for name, spec in registry.ATTACKS.items():
        cfg = AttackConfig(method=name, eps=0.1, steps=7).validate()
        assert cfg.spec is spec and cfg.adaptive == spec.knows_detector
        assert cfg.effective_steps == (1 if spec.one_step else 7)
    for name, spec in registry.EXPLAINERS.items():
        cfg = AttributionConfig(explainer=name, views=(), layer="late", baseline="black")
        assert cfg.passes_per_image == spec.passes(cfg)


def test_cli_help_lists_every_registered_name() -> None:
    from raydetect.cli import app

    runner = CliRunner()
    attack_help = " ".join(runner.invoke(app, ["attack", "--help"], env={"COLUMNS": "400"}).output.split())
    features_help = " ".join(runner.invoke(app, ["features", "--help"], env={"COLUMNS": "400"}).output.split())
    for name in registry.ATTACKS:
        assert f"{name}:" in attack_help
    for name in registry.READERS:
        assert f"{name}:" in attack_help
    for name in registry.EXPLAINERS:
        assert f"{name}:" in features_help


def test_an_unknown_attack_is_one_clear_error() -> None:
    from raydetect.errors import RaydetectError

    with pytest.raises(RaydetectError, match="attack method must be one of bim, pgd"):
        AttackConfig(method="nope").validate()


@pytest.mark.parametrize("method", [n for n, s in registry.ATTACKS.items() if not s.needs])
def test_measured_passes_stay_within_the_registered_cost(digits_model, digits_test, method) -> None:
    cfg = AttackConfig(method=method, eps=0.3, steps=6)
    res = make_attack(digits_model, cfg)(torch.from_numpy(digits_test.images[:8]), torch.from_numpy(digits_test.labels[:8]))
    assert res.passes.max() <= cfg.max_passes
    assert res.passes.min() >= 1


def test_pgd_start_depends_on_the_image_key_not_its_batch(digits_model, digits_test) -> None:
    x, y = torch.from_numpy(digits_test.images[:6]), torch.from_numpy(digits_test.labels[:6])
    keys = np.arange(100, 106)
    attack = make_attack(digits_model, AttackConfig(method=registry.PGD.name, eps=0.3, steps=3))
    whole = attack(x, y, keys).adversarial
    order = np.array([4, 1, 5, 0, 3, 2])
    parts = [attack(x[order[:2]], y[order[:2]], keys[order[:2]]), attack(x[order[2:]], y[order[2:]], keys[order[2:]])]
    shuffled = torch.cat([p.adversarial for p in parts])
    assert torch.equal(shuffled, whole[order])
    # ... and the key matters: other keys give other starts.
    assert not torch.equal(attack(x, y, keys + 1).adversarial, whole)
