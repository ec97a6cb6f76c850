"""Input Integrated Gradients, plain torch (can keep the graph for attacks through the explanation)."""

from __future__ import annotations

from raydetect.explain.ig import integrated_gradients as _integrate
from raydetect.explain.methods import Attribution, Call


def integrated_gradients(c: Call) -> Attribution:
    attr = _integrate(c.model, c.x, c.base, c.targets, c.cfg.n_steps, c.cfg.integration, c.chunk, c.create_graph)
    return attr, None  # delta follows from the logits (see Explainer.__call__)
