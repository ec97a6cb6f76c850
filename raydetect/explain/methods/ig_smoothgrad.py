"""Integrated Gradients under a SmoothGrad noise tunnel (captum)."""

from __future__ import annotations

from raydetect.explain.methods import Attribution, Call


def ig_smoothgrad(c: Call) -> Attribution:
    from captum.attr import IntegratedGradients, NoiseTunnel

    # The noise tunnel hands IG n * samples inputs at once; chunks must hold them all.
    attr = NoiseTunnel(IntegratedGradients(c.model)).attribute(
        c.x, nt_type="smoothgrad", nt_samples=c.cfg.samples, stdevs=c.cfg.noise_std, baselines=c.base, target=c.targets,
        n_steps=c.cfg.n_steps, method=c.cfg.integration, internal_batch_size=max(c.chunk, len(c.x) * c.cfg.samples),
    )  # fmt: skip
    return attr, None
