from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.attacks import make_attack, random_targets
from raydetect.config import AttackConfig
from raydetect.errors import RaydetectError


@pytest.fixture(scope="module")
def batch(digits_test):
    x = torch.from_numpy(digits_test.images[:120])
    y = torch.from_numpy(digits_test.labels[:120])
    return x, y


@pytest.mark.parametrize("method", ["bim", "fgsm", "pgd", "paper_bim"])
@pytest.mark.parametrize("mode", ["untargeted", "random", "second"])
def test_perturbation_stays_in_eps_ball_and_pixel_range(digits_model, batch, method, mode) -> None:
    x, y = batch
    cfg = AttackConfig(method=method, mode=mode, eps=0.15, steps=5, seed=3)
    r = make_attack(digits_model, cfg)(x, y)
    assert r.adversarial.shape == x.shape
    assert (r.adversarial - x).abs().max() <= cfg.eps + 1e-6
    assert r.adversarial.min() >= 0.0 and r.adversarial.max() <= 1.0
    assert r.success.dtype == torch.bool and r.success.shape == (len(x),)


def test_results_are_8bit_images_inside_the_ball_judged_as_such(digits_model, batch) -> None:
    x, y = batch
    x8 = torch.round(x * 255) / 255  # what an auditor receives is 8-bit from the start
    r = make_attack(digits_model, AttackConfig(eps=4 / 255, steps=10))(x8, y)
    assert torch.equal(r.adversarial, torch.round(r.adversarial * 255) / 255)  # on the 8-bit grid
    assert (r.adversarial - x8).abs().max() <= 4 / 255 + 1e-6
    with torch.no_grad():
        assert torch.equal(r.adv_pred, digits_model(r.adversarial).argmax(1))  # judged on the returned image
    assert torch.equal(r.success, r.adv_pred != y)


def test_bim_beats_fgsm_at_the_same_eps(digits_model, batch) -> None:
    x, y = batch
    fgsm = make_attack(digits_model, AttackConfig(method="fgsm", eps=0.2))(x, y).success_rate()
    bim = make_attack(digits_model, AttackConfig(method="bim", eps=0.2, steps=10))(x, y).success_rate()
    assert bim > fgsm + 0.05, (bim, fgsm)


def test_bim_really_iterates(digits_model, batch) -> None:
    """Unlike the paper's code, more BIM steps change the result (it does not restart from x)."""
    x, y = batch
    one = make_attack(digits_model, AttackConfig(method="bim", eps=0.2, steps=1, alpha=0.05), quantize=False)(x, y)
    many = make_attack(digits_model, AttackConfig(method="bim", eps=0.2, steps=8, alpha=0.05), quantize=False)(x, y)
    assert (one.adversarial - x).abs().max() <= 0.05 + 1e-6
    assert (many.adversarial - x).abs().max() > 0.05 + 1e-3
    assert many.success_rate() > one.success_rate()


def test_paper_bim_is_one_fgsm_step_whatever_the_steps(digits_model, batch) -> None:
    x, y = batch
    paper = make_attack(digits_model, AttackConfig(method="paper_bim", eps=0.1, steps=20), quantize=False)(x, y)
    fgsm = make_attack(digits_model, AttackConfig(method="fgsm", eps=0.1), quantize=False)(x, y)
    assert torch.equal(paper.adversarial, fgsm.adversarial)
    # Every pixel that moved moved by exactly eps (or hit the [0,1] boundary).
    d = (paper.adversarial - x).abs()
    moved = d > 1e-6
    at_eps = (d - 0.1).abs() < 1e-5
    at_edge = (paper.adversarial == 0) | (paper.adversarial == 1)
    assert bool((at_eps | at_edge)[moved].all())


@pytest.mark.parametrize("mode", ["random", "second"])
def test_targeted_modes_hit_their_target(digits_model, batch, mode) -> None:
    x, y = batch
    r = make_attack(digits_model, AttackConfig(method="bim", mode=mode, eps=0.3, steps=20))(x, y)
    assert bool((r.targets != r.labels).all())
    assert bool((r.success == (r.adv_pred == r.targets)).all())
    assert r.success_rate() >= 0.8


def test_second_mode_targets_the_runner_up(digits_model, batch) -> None:
    x, y = batch
    r = make_attack(digits_model, AttackConfig(mode="second", eps=0.01, steps=1))(x, y)
    with torch.no_grad():
        top2 = digits_model(x).topk(2, dim=1).indices
    correct = r.correct
    assert torch.equal(r.targets[correct], top2[correct, 1])


def test_untargeted_success_is_leaving_the_true_label(digits_model, batch) -> None:
    x, y = batch
    r = make_attack(digits_model, AttackConfig(eps=0.25))(x, y)
    assert torch.equal(r.success, r.adv_pred != y)
    # Success rate counts correctly classified images only.
    n = int(r.correct.sum())
    assert r.success_rate() == pytest.approx(float((r.success & r.correct).sum()) / n)


def test_random_targets_do_not_depend_on_batching() -> None:
    labels = np.array([3, 3, 7, 0, 9])
    keys = np.array([10, 11, 12, 13, 14])
    whole = random_targets(labels, 10, seed=5, keys=keys)
    parts = np.concatenate([random_targets(labels[:2], 10, 5, keys[:2]), random_targets(labels[2:], 10, 5, keys[2:])])
    assert np.array_equal(whole, parts)
    assert not np.any(whole == labels)


def test_random_targets_are_roughly_uniform() -> None:
    labels = np.zeros(5000, dtype=np.int64)
    t = random_targets(labels, 10, seed=0, keys=np.arange(5000))
    counts = np.bincount(t, minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 450 and counts[1:].max() < 650


def test_attack_config_validation() -> None:
    with pytest.raises(RaydetectError, match="eps"):
        AttackConfig(eps=0).validate()
    with pytest.raises(RaydetectError, match="<= 1"):
        AttackConfig(eps=4).validate()
    with pytest.raises(RaydetectError, match="mode"):
        AttackConfig(mode="sideways").validate()  # type: ignore[arg-type]
    assert AttackConfig(eps=0.1, steps=10).step_size == pytest.approx(0.025)
    assert AttackConfig(method="paper_bim", steps=20).effective_steps == 1
