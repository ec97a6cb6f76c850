"""GradientShap: expected gradients over baseline draws (captum)."""

from __future__ import annotations

import numpy as np

from raydetect.explain.methods import Attribution, Call


def gradient_shap(c: Call) -> Attribution:
    from captum.attr import GradientShap

    n = len(c.x)
    base = c.base
    if c.cfg.baseline != "train":
        base = base if len(base) > 1 else base.expand(2, *base.shape[1:])
    # captum draws baselines and path points from numpy's global RNG; pin it, then restore.
    state = np.random.get_state()
    np.random.seed((c.cfg.seed * 1_000_003 + (int(c.keys[0]) if n else 0)) % 2**32)
    try:
        attr, delta = GradientShap(c.model).attribute(
            c.x, baselines=base, n_samples=c.cfg.samples, stdevs=0.0, target=c.targets, return_convergence_delta=True
        )
    finally:
        np.random.set_state(state)
    return attr, delta.view(n, c.cfg.samples).mean(1)
