"""Gradient x input: one pass, plain torch (differentiable)."""

from __future__ import annotations

import torch

from raydetect.explain.methods import Attribution, Call


def saliency(c: Call) -> Attribution:
    x = c.x if c.create_graph else c.x.detach().requires_grad_(True)
    out = c.model(x).gather(1, c.targets.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(out, x, create_graph=c.create_graph)
    return grad * x, None
