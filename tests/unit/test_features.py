from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.config import DESCRIPTORS, FeatureConfig
from raydetect.errors import RaydetectError
from raydetect.explain import Explanation, describe, feature_names
from raydetect.explain.descriptors import sorted_quantiles


def _explanation(n: int, c: int, h: int, w: int, seed: int = 0) -> Explanation:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 3
    return Explanation(
        attributions=torch.randn(n, c, h, w, generator=g),
        targets=logits.argmax(1),
        logits=logits,
        baseline_logits=torch.randn(n, 10, generator=g),
        delta=None,
    )


@pytest.mark.parametrize("size", [8, 57, 224, 299])
def test_descriptor_length_is_fixed_whatever_the_image_size(size: int) -> None:
    cfg = FeatureConfig(descriptors=tuple(DESCRIPTORS), quantiles=32)  # type: ignore[arg-type]
    f = describe(_explanation(3, 3, size, size), cfg)
    assert f.shape == (3, len(feature_names(cfg)))
    assert f.dtype == torch.float32 and bool(torch.isfinite(f).all())


def test_sorted_quantiles_are_the_sorted_values_resampled() -> None:
    v = torch.tensor([[5.0, -1.0, 3.0, 0.0, 2.0]])
    q = sorted_quantiles(v, 5)
    assert torch.equal(q, torch.tensor([[-1.0, 0.0, 2.0, 3.0, 5.0]]))
    q9 = sorted_quantiles(v, 9)
    assert q9[0, 0] == -1 and q9[0, -1] == 5
    assert bool((q9[0, 1:] >= q9[0, :-1]).all())
    assert np.allclose(q9.numpy(), np.quantile(v.numpy(), np.linspace(0, 1, 9), axis=1).T)


def test_concentration_bounds_and_extremes() -> None:
    cfg = FeatureConfig(descriptors=("concentration",))
    names = feature_names(cfg)
    flat = torch.zeros(1, 1, 10, 10)
    flat[0, 0, 0, 0] = 1.0  # all mass on one pixel
    uniform = torch.ones(1, 1, 10, 10)
    e = _explanation(2, 1, 10, 10)
    e.attributions = torch.cat([flat, uniform])
    f = dict(zip(names, describe(e, cfg).T, strict=True))
    assert f["conc_top1pct"][0] == pytest.approx(1.0) and f["conc_top1pct"][1] == pytest.approx(0.01)
    assert f["conc_entropy"][0] == pytest.approx(0.0, abs=1e-6) and f["conc_entropy"][1] == pytest.approx(1.0)
    assert f["conc_gini"][0] > 0.95 and f["conc_gini"][1] == pytest.approx(0.0, abs=1e-6)


def test_stats_sum_equals_attribution_sum() -> None:
    e = _explanation(4, 3, 16, 16)
    cfg = FeatureConfig(descriptors=("stats",))
    f = dict(zip(feature_names(cfg), describe(e, cfg).T, strict=True))
    assert np.allclose(f["stat_sum"], e.attributions.sum((1, 2, 3)).numpy(), rtol=1e-5)


def test_feature_config_validation() -> None:
    with pytest.raises(RaydetectError, match="descriptor"):
        FeatureConfig(descriptors=("nope",)).validate()  # type: ignore[arg-type]
    with pytest.raises(RaydetectError, match="quantiles"):
        FeatureConfig(quantiles=1).validate()
