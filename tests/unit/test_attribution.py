from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.config import AttributionConfig
from raydetect.errors import RaydetectError
from raydetect.explain import Explainer, gaussian_blur


@pytest.fixture(scope="module")
def images(digits_test):
    return torch.from_numpy(digits_test.images[:24])


def _gap(e) -> torch.Tensor:
    t = e.targets[:, None]
    return (e.logits.gather(1, t) - e.baseline_logits.gather(1, t)).squeeze(1)


@pytest.mark.parametrize("baseline", ["black", "blur", "noise"])
def test_ig_completeness(digits_model, images, baseline) -> None:
    """Sum of attributions = f(x) - f(baseline), ever closer as the path integral gets finer."""
    errors = []
    for steps in (8, 256):
        e = Explainer(digits_model, AttributionConfig(n_steps=steps, baseline=baseline))(images)
        errors.append(float((e.attributions.sum((1, 2, 3)) - _gap(e)).abs().max()))
    gap = float(_gap(e).abs().mean())
    assert errors[1] < errors[0]
    assert errors[1] < 0.01 * gap, (errors, gap)


def test_explains_the_predicted_class_by_default(digits_model, images) -> None:
    e = Explainer(digits_model, AttributionConfig(n_steps=4))(images)
    assert torch.equal(e.targets, e.logits.argmax(1))
    assert e.attributions.shape == images.shape


def test_each_image_is_explained_on_its_own(digits_model, images) -> None:
    cfg = AttributionConfig(n_steps=8, baseline="noise", seed=1)
    whole = Explainer(digits_model, cfg)(images[:6], keys=np.arange(6))
    part = Explainer(digits_model, cfg)(images[3:6], keys=np.arange(3, 6))
    assert torch.allclose(whole.attributions[3:], part.attributions, atol=1e-5)


def test_layer_ig_attributes_to_the_layer(digits_model, images) -> None:
    e = Explainer(digits_model, AttributionConfig(explainer="layer_ig", layer="middle", n_steps=8))(images[:4])
    assert e.attributions.shape == (4, 64, 4, 4)  # after the 2x2 pool


def test_gradient_shap_draws_from_reference_images(digits_model, images, digits_test) -> None:
    refs = torch.from_numpy(digits_test.images[100:140])
    cfg = AttributionConfig(explainer="gradient_shap", baseline="train", samples=16)
    e1 = Explainer(digits_model, cfg, references=refs)(images[:4])
    e2 = Explainer(digits_model, cfg, references=refs)(images[:4])
    assert e1.attributions.shape == images[:4].shape
    assert torch.equal(e1.attributions, e2.attributions)  # seeded
    with pytest.raises(RaydetectError, match="reference"):
        Explainer(digits_model, cfg)


def test_smoothgrad_and_saliency_run(digits_model, images) -> None:
    sg = Explainer(digits_model, AttributionConfig(explainer="ig_smoothgrad", n_steps=4, samples=3, views=()))(images[:3])
    sal = Explainer(digits_model, AttributionConfig(explainer="saliency"))(images[:3])
    assert sg.attributions.shape == sal.attributions.shape == images[:3].shape
    assert AttributionConfig(explainer="ig_smoothgrad", n_steps=4, samples=3, views=()).passes_per_image == 12


def test_pair_baseline_needs_twins(digits_model, images) -> None:
    ex = Explainer(digits_model, AttributionConfig(baseline="pair", n_steps=4))
    with pytest.raises(RaydetectError, match="twin"):
        ex(images[:2])
    twins = images[:2].flip(0)
    e = ex(images[:2], twins=twins)
    assert torch.allclose(e.baseline_logits, e.logits.flip(0), atol=1e-4)


def test_blur_baseline_is_smooth_and_same_shape() -> None:
    x = torch.rand(2, 3, 32, 32)
    b = gaussian_blur(x, 2.0)
    assert b.shape == x.shape
    assert b.std() < x.std()
    tiny = gaussian_blur(torch.rand(1, 1, 8, 8), 4.0)  # kernel clipped to the image
    assert tiny.shape == (1, 1, 8, 8)


def test_config_validation() -> None:
    with pytest.raises(RaydetectError, match="layer"):
        AttributionConfig(explainer="layer_ig").validate()
    with pytest.raises(RaydetectError, match="gradient_shap"):
        AttributionConfig(baseline="train").validate()
    with pytest.raises(RaydetectError, match="steps"):
        AttributionConfig(n_steps=0).validate()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
@pytest.mark.parametrize("chunk", [None, 8])
def test_our_ig_equals_captums(digits_model, images, method, chunk) -> None:
    """raydetect's torch IG (differentiable) computes what captum's IntegratedGradients does."""
    from captum.attr import IntegratedGradients

    # Fixed blur (no views, no per-image jitter of sigma): captum's IG takes one baseline.
    cfg = AttributionConfig(n_steps=6, baseline="blur", integration=method, internal_batch_size=chunk, views=(), jitter=0.0)
    ours = Explainer(digits_model, cfg)(images)
    ref = IntegratedGradients(digits_model).attribute(
        images, baselines=gaussian_blur(images, cfg.blur_sigma), target=ours.targets, n_steps=6, method=method
    )
    assert torch.allclose(ours.attributions, ref, atol=1e-5, rtol=1e-4)
    assert not torch.equal(ref, torch.zeros_like(ref))


def test_explanations_differentiate_through_the_image(digits_model, images) -> None:
    """With create_graph the attribution is a function of the image; without, it is detached."""
    cfg = AttributionConfig(n_steps=4)
    x = images[:4].clone().requires_grad_(True)
    e = Explainer(digits_model, cfg)(x, create_graph=True)
    (grad,) = torch.autograd.grad(e.attributions.abs().sum(), x)
    assert grad.abs().sum() > 0
    plain = Explainer(digits_model, cfg)(images[:4])
    assert not plain.attributions.requires_grad
    assert torch.allclose(plain.attributions, e.attributions.detach(), atol=1e-6)
    with pytest.raises(RaydetectError, match="not differentiable"):
        Explainer(digits_model, AttributionConfig(explainer="layer_ig", layer="middle"))(x, create_graph=True)
