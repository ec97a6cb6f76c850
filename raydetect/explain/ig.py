"""Integrated Gradients (Sundararajan et al. 2017) in plain torch, differentiable end to end.

attr_i = (x_i - b_i) * sum_k w_k * d f_t(b + a_k (x - b)) / d x_i, with captum's quadrature
(Gauss-Legendre or Riemann nodes a_k and weights w_k), so results equal captum's
``IntegratedGradients`` to float precision (a test checks it). Unlike captum it can keep the
graph (``create_graph=True``): the attribution is then a function of x that an attack can
differentiate, through the path points and through the baseline when it depends on x.
"""

from __future__ import annotations

import numpy as np
import torch

from raydetect.models import ImageClassifier


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """(weights, nodes in [0, 1]) of the rule captum uses for ``method``."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    if n_steps < 2:
        raise ValueError("Riemann rules need at least 2 steps")
    kind = method.split("_")[-1]
    weights = [1 / n_steps] * n_steps
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return weights, torch.linspace(0, 1, n_steps).tolist()
    lo, hi = {"left": (0, 1 - 1 / n_steps), "middle": (1 / (2 * n_steps), 1 - 1 / (2 * n_steps)), "right": (1 / n_steps, 1)}[kind]
    return weights, torch.linspace(lo, hi, n_steps).tolist()


def integrated_gradients(
    model: ImageClassifier,
    x: torch.Tensor,  # (N, C, H, W)
    baseline: torch.Tensor,  # (N, C, H, W)
    targets: torch.Tensor,  # (N,) class explained per image
    n_steps: int,
    method: str = "gausslegendre",
    chunk: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Attributions (N, C, H, W). ``chunk``: scaled inputs per forward/backward pass (whole steps of the
    batch; a chunk below the batch explains it in slices of ``chunk`` images, one step per pass)."""
    n = len(x)
    if chunk < n:  # each image's attribution is its own: slicing the batch changes nothing but memory
        parts = [
            integrated_gradients(model, x[i : i + chunk], baseline[i : i + chunk], targets[i : i + chunk], n_steps, method,
                                 chunk, create_graph)
            for i in range(0, n, chunk)
        ]  # fmt: skip
        return torch.cat(parts)
    weights, alphas = quadrature(method, n_steps)
    if not create_graph:
        x, baseline = x.detach(), baseline.detach()
    diff = x - baseline
    per_pass = max(1, chunk // max(n, 1))  # steps per pass, as captum batches them
    total = torch.zeros_like(x)
    for start in range(0, n_steps, per_pass):
        a, w = alphas[start : start + per_pass], weights[start : start + per_pass]
        scaled = torch.cat([baseline + alpha * diff for alpha in a], dim=0)  # (len(a) * N, C, H, W)
        if not scaled.requires_grad:  # a leaf when x is detached: the path points are the variables
            scaled.requires_grad_(True)
        out = model(scaled).gather(1, targets.repeat(len(a)).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(out, scaled, create_graph=create_graph)
        step = torch.tensor(w, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1, 1)
        total = total + (grad.contiguous().view(len(a), *x.shape) * step).sum(0)
    return total * diff
