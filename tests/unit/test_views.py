"""Views of an image (blur, median, JPEG, bit depth) and their keyed, per-image random strength."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.errors import RaydetectError
from raydetect.explain import Explainer, describe, feature_names
from raydetect.explain.baselines import views
from raydetect.explain.views import keyed_draws, median_filter, view_fn


@pytest.fixture(scope="module")
def images(digits_test) -> torch.Tensor:
    return torch.round(torch.from_numpy(digits_test.images[:12]) * 255) / 255


@pytest.mark.parametrize("spec", ["blur:2", "median:3", "jpeg:60", "bits:3"])
def test_views_keep_shape_and_range_and_pass_gradients(images, spec) -> None:
    x = images.clone().requires_grad_(True)
    v = view_fn(spec, 0.0)(x, torch.zeros(len(x)))
    assert v.shape == x.shape and v.min() >= -1e-6 and v.max() <= 1 + 1e-6
    assert not torch.equal(v.detach(), x.detach())  # it changes the image
    (g,) = torch.autograd.grad(v.sum(), x)
    assert g.abs().sum() > 0  # JPEG and bit depth pass gradients straight through


def test_median_filter_is_the_median() -> None:
    x = torch.rand(1, 1, 9, 9)
    m = median_filter(x, 3)
    assert torch.isclose(m[0, 0, 4, 4], x[0, 0, 3:6, 3:6].flatten().median())


def test_keyed_draws_follow_the_pixels_and_the_key(images) -> None:
    a = keyed_draws(images, 2, b"k1")
    assert a.shape == (12, 2) and bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(a[3:6], keyed_draws(images[3:6], 2, b"k1"))  # batch position does not matter
    assert not torch.equal(a, keyed_draws(images, 2, b"k2"))  # another secret, other draws
    moved = images.clone()
    moved[0, 0, 0, 0] = 1 - moved[0, 0, 0, 0]
    assert not torch.equal(a[0], keyed_draws(moved, 2, b"k1")[0])  # one pixel changes the draw


def test_extra_views_extend_the_descriptor(digits_model, images) -> None:
    acfg = AttributionConfig(n_steps=4, views=("jpeg:60", "median:3"))
    fcfg = FeatureConfig(quantiles=8)
    f = describe(Explainer(digits_model, acfg)(images), fcfg)
    assert f.shape == (12, len(feature_names(fcfg, acfg)))
    assert len(feature_names(fcfg, acfg)) > len(feature_names(fcfg))
    assert [n for n in feature_names(fcfg, acfg) if n.startswith("v2_")]
    assert len(views(acfg)) == 3  # the blurred baseline and both extra views


def test_secret_view_strength_is_reproducible_for_its_owner(digits_model, images, monkeypatch) -> None:
    acfg = AttributionConfig(n_steps=4, views=("blur:1",), jitter=0.5)
    fcfg = FeatureConfig(quantiles=8)
    monkeypatch.setenv("RAYDETECT_SECRET", "auditor-a")
    a1 = describe(Explainer(digits_model, acfg)(images), fcfg)
    a2 = describe(Explainer(digits_model, acfg)(images[:6]), fcfg)
    assert torch.allclose(a1[:6], a2, atol=1e-5)  # same secret, same image: same descriptor
    monkeypatch.setenv("RAYDETECT_SECRET", "auditor-b")
    b = describe(Explainer(digits_model, acfg)(images), fcfg)
    assert not torch.allclose(a1, b, atol=1e-4)  # another secret draws other view strengths
    plain = describe(Explainer(digits_model, AttributionConfig(n_steps=4, views=("blur:1",)))(images), fcfg)
    assert not torch.allclose(a1, plain, atol=1e-4)


def test_bad_views_are_refused() -> None:
    with pytest.raises(RaydetectError, match="kind:parameter"):
        AttributionConfig(views=("sharpen:2",)).validate()
    with pytest.raises(RaydetectError, match="kind:parameter"):
        AttributionConfig(views=("blur",)).validate()
    with pytest.raises(RaydetectError, match="ig or saliency"):
        AttributionConfig(explainer="layer_ig", layer="middle", views=("blur:2",)).validate()
    assert AttributionConfig(n_steps=4, views=("blur:1", "jpeg:50")).passes_per_image == 12
    # An audited image: IG against the baseline and each view, plus a forward pass of the image and of each.
    assert AttributionConfig(n_steps=4, views=("jpeg:60", "median:3")).audit_passes == 12 + 4
    assert AttributionConfig(n_steps=4, views=()).audit_passes == 4 + 2
    np.testing.assert_equal(len(views(AttributionConfig(baseline="black", views=()))), 0)


@pytest.mark.parametrize("spec", ["blur:1.0", "median:3", "jpeg:60", "bits:5"])
def test_jittered_views_batched_equal_each_image_alone(images, spec) -> None:
    """Each image's view at its own drawn strength, computed for the batch at once (JPEG in one copy off the
    device, a median per distinct kernel size) equals the view of that image alone at that strength."""
    fn = view_fn(spec, jitter=0.7)
    x = images[:8]
    u = torch.linspace(0.0, 0.99, len(x))
    batched = fn(x, u)
    alone = torch.cat([fn(x[i : i + 1], u[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batched, alone, atol=1e-6)
    assert len({round(float(v), 6) for v in u}) == len(x)  # the draws differ, so the strengths do
