"""Attacks of every strength: early stopping, kappa, DeepFool, squeeze_eot keep the 8-bit invariants
and do what their names say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.attacks import make_attack, margin
from raydetect.config import AttackConfig
from raydetect.errors import RaydetectError
from raydetect.explain.baselines import gaussian_blur


@pytest.fixture(scope="module")
def batch(digits_test):
    x = torch.round(torch.from_numpy(digits_test.images[:60]) * 255) / 255  # 8-bit, as audited
    return x, torch.from_numpy(digits_test.labels[:60])


def _blur_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return gaussian_blur(x, 1.0)


CONFIGS = [
    AttackConfig(method="bim", eps=0.2, steps=30, alpha=0.02, stop_margin=0.0),
    AttackConfig(method="pgd", mode="second", eps=0.2, steps=20, stop_margin=2.0),
    AttackConfig(method="deepfool", eps=0.2, steps=30),
    AttackConfig(method="deepfool", mode="random", eps=0.2, steps=30),
    AttackConfig(method="squeeze_eot", eps=0.2, steps=10),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_results_are_8bit_inside_the_ball_and_judged_on_that(digits_model, batch, cfg) -> None:
    x, y = batch
    r = make_attack(digits_model, cfg, views=[_blur_view])(x, y)
    assert (r.adversarial - x).abs().max() <= cfg.eps + 1e-6
    assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    assert torch.equal(r.adversarial, torch.round(r.adversarial * 255) / 255)
    with torch.no_grad():
        assert torch.equal(r.adv_pred, digits_model(r.adversarial).argmax(1))
    assert r.success_rate() > 0.3, r.success_rate()  # a random target is far for some digits at 0.2
    assert (r.passes > 0).all() and (r.passes <= cfg.steps * max(cfg.candidates, 2)).all()


def test_early_stopping_stops_at_the_first_success(digits_model, batch) -> None:
    x, y = batch
    cfg = AttackConfig(method="bim", eps=0.2, steps=30, alpha=0.02, stop_margin=0.0)
    r = make_attack(digits_model, cfg)(x, y)
    hit = np.flatnonzero((r.success & r.correct).numpy())[:12]
    assert len(hit) >= 6
    for i in hit:
        n = int(r.passes[i])
        # The same attack run for one step fewer has not succeeded yet (on its 8-bit image)...
        if n > 1:
            shorter = AttackConfig(method="bim", eps=0.2, steps=n - 1, alpha=0.02)
            before = make_attack(digits_model, shorter)(x[i : i + 1], y[i : i + 1])
            assert not bool(before.success[0]), (i, n)
        # ...and running it longer gives a more confident adversarial than the stopped one.
        full = make_attack(digits_model, AttackConfig(method="bim", eps=0.2, steps=30, alpha=0.02))(x[i : i + 1], y[i : i + 1])
        assert float(full.adv_conf[0]) >= float(r.adv_conf[i]) - 1e-6


def test_kappa_stops_once_the_margin_is_reached(digits_model, batch) -> None:
    x, y = batch
    r = make_attack(digits_model, AttackConfig(method="bim", eps=0.3, steps=40, alpha=0.01, stop_margin=3.0))(x, y)
    with torch.no_grad():
        m = margin(digits_model(r.adversarial), r.labels, targeted=False)
    stopped = (r.passes < 40).numpy()
    assert stopped.sum() >= 10
    assert (m[torch.from_numpy(stopped)] > 3.0).all()


def test_minimal_attacks_give_low_confidence_adversarials(digits_model, batch) -> None:
    x, y = batch
    full = make_attack(digits_model, AttackConfig(eps=0.2, steps=10))(x, y)
    deepfool = make_attack(digits_model, AttackConfig(method="deepfool", eps=0.2, steps=30))(x, y)
    both = (full.success & deepfool.success & full.correct).numpy()
    assert both.sum() >= 20
    assert deepfool.adv_conf[both].mean() < full.adv_conf[both].mean() - 0.2
    linf_df = (deepfool.adversarial - x).flatten(1).abs().max(1).values[both]
    linf_full = (full.adversarial - x).flatten(1).abs().max(1).values[both]
    assert linf_df.mean() < linf_full.mean()


def test_squeeze_eot_fools_the_view_too(digits_model, batch) -> None:
    x, y = batch
    plain = make_attack(digits_model, AttackConfig(eps=0.2, steps=20))(x, y)
    squeeze = make_attack(digits_model, AttackConfig(method="squeeze_eot", eps=0.2, steps=20), views=[_blur_view])(x, y)
    with torch.no_grad():
        view_fooled = {
            name: float((digits_model(gaussian_blur(r.adversarial, 1.0)).argmax(1) != y)[r.correct].float().mean())
            for name, r in (("plain", plain), ("squeeze", squeeze))
        }
    assert view_fooled["squeeze"] > view_fooled["plain"] + 0.1, view_fooled


def test_attacks_that_need_the_detector_say_so(digits_model) -> None:
    with pytest.raises(RaydetectError, match="views"):
        make_attack(digits_model, AttackConfig(method="squeeze_eot"))
    with pytest.raises(RaydetectError, match="detector"):
        make_attack(digits_model, AttackConfig(method="adaptive"))
    with pytest.raises(RaydetectError, match="iterative"):
        AttackConfig(method="deepfool", stop_margin=0.0).validate()
    with pytest.raises(RaydetectError, match="transfer"):
        AttackConfig(method="adaptive", source_model="efficientnet_lite1").validate()
