"""Integrated Gradients at an inner layer (captum)."""

from __future__ import annotations

from raydetect.explain.methods import Attribution, Call


def layer_integrated_gradients(c: Call) -> Attribution:
    from captum.attr import LayerIntegratedGradients

    method = LayerIntegratedGradients(c.model, c.model.layer(c.cfg.layer or ""))
    return method.attribute(
        c.x, baselines=c.base, target=c.targets, n_steps=c.cfg.n_steps, method=c.cfg.integration,
        internal_batch_size=c.chunk, return_convergence_delta=True,
    )  # fmt: skip
