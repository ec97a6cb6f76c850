"""raydetect's models work as they are with other libraries' attacks (torchattacks here).

The wrapper runs the network in channels-last memory; the gradient with respect to the input must
still come back in the input's own layout, or code that ``.view``s it (torchattacks' L2 attacks)
fails with "view size is not compatible with input tensor's size and stride". A 3-channel model
is needed to see it: with one channel the two layouts coincide.
"""

from __future__ import annotations

import pytest
import torch

from raydetect.config import ModelConfig
from raydetect.models import load_model


@pytest.fixture(scope="module")
def lite0():
    return load_model(ModelConfig(name="efficientnet_lite0", device="cpu"))


def test_input_gradient_keeps_the_input_layout(lite0) -> None:
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.rand(2, 3, 224, 224).contiguous(memory_format=layout).requires_grad_(True)
        # torch.autograd.grad, as attacks call it (a leaf's .grad is re-laid out to match the leaf anyway).
        (grad,) = torch.autograd.grad(lite0(x).logsumexp(1).sum(), x)
        assert grad.is_contiguous(memory_format=layout), layout
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["PGDL2", "CW"])
def test_torchattacks_run_on_a_raydetect_model(lite0, name: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = lite0(x).argmax(1)
    attack = torchattacks.PGDL2(lite0, eps=0.5, alpha=0.2, steps=2) if name == "PGDL2" else torchattacks.CW(lite0, c=1, steps=2)
    adv = attack(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    assert (delta.abs().amax(1) > 0).all()  # the attack moved every image
    if name == "PGDL2":
        assert (delta.norm(dim=1) <= 0.5 + 1e-4).all()
