"""The explainer: runs the attribution method the registry names (``raydetect.registry.EXPLAINERS``,
one file per method under ``explain/methods/``) against the baseline and every view.

Each image is explained on its own, for the model's predicted class (an auditor has no label),
against a baseline built from that image alone (black, blurred, noise), from clean reference
images (GradientShap), or from its twin (the paper's leaky protocol, replication only).
``ig`` and ``saliency`` are plain torch and can keep the graph for attacks that differentiate
through the explanation; the others run through captum.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from raydetect import registry
from raydetect.config import AttributionConfig
from raydetect.errors import RaydetectError
from raydetect.explain.baselines import baselines
from raydetect.explain.methods import Call
from raydetect.explain.views import keyed_draws, view_fn, view_specs
from raydetect.models import ImageClassifier
from raydetect.models.runtime import PASS_MEMORY_ENV, pass_bytes_per_input, pass_memory_budget

log = logging.getLogger(__name__)

# Scaled inputs per forward/backward chunk when the user sets none. On CPU, chunks of 16-32 run
# as fast as 64 (measured 44.5 vs 42.1 passes/s, efficientnet_lite0, 2 cores) with half the
# memory (3.0 vs 5.2 GB peak); 128 is slower. GPUs want larger chunks, as many as the pass memory
# budget holds (models.runtime.pass_memory_budget) up to the CUDA value here.
DEFAULT_CHUNK = {"cpu": 32, "cuda": 256}
# Errors after which a pass is tried again at half the chunk (later batches keep the smaller chunk).
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)


@dataclass
class Explanation:
    """Attributions for a batch, plus the logits a descriptor may use; tensors on the model's device."""

    attributions: torch.Tensor  # (N, C, H, W): input space, or the layer's activation shape
    targets: torch.Tensor  # (N,) explained class (the model's prediction unless given)
    logits: torch.Tensor  # (N, K) at the input
    baseline_logits: torch.Tensor  # (N, K) at the (mean) baseline
    delta: torch.Tensor | None  # (N,) IG completeness error, where defined
    views: list[Explanation] = field(default_factory=list)  # one per extra view (AttributionConfig.views)


class Explainer:
    """Explains batches of [0,1] images with one :class:`AttributionConfig`.

    ``references`` (R, C, H, W) are clean images that GradientShap draws baselines from
    (``baseline='train'``); they must come from the training side of any split. ``key`` keys the
    views' per-image strengths (default: :func:`views.secret` of the process that explains).
    """

    def __init__(
        self, model: ImageClassifier, cfg: AttributionConfig, references: torch.Tensor | None = None, key: bytes | None = None
    ) -> None:
        if cfg.baseline == "train" and (references is None or len(references) == 0):
            raise RaydetectError("baseline 'train' needs reference clean images")
        self.model = model.eval()
        self.cfg = cfg
        self.method = registry.EXPLAINERS[cfg.explainer]
        self.attribute = self.method.load()
        self.references = references
        self.key = key
        self.chunk_cap: int | None = None  # the largest chunk that has not run out of memory, once one did
        self._budget_chunk: int | None = None  # the chunk the pass memory budget holds, if there is a budget
        self._sized = False

    @property
    def differentiable(self) -> bool:
        return self.method.differentiable

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | None = None,
        keys: np.ndarray | None = None,
        twins: torch.Tensor | None = None,
        create_graph: bool = False,
        draws: torch.Tensor | None = None,
    ) -> Explanation:
        """Explain a batch (N, C, H, W) in [0,1] for ``targets`` (default: the predicted class).

        With ``create_graph`` (differentiable methods only) every output stays a function of
        ``images``, for attacks that optimise against the explanation. ``draws`` (N, views) set the
        views' random strength; by default they come from the keyed hash of each image (the auditor's).
        """
        if create_graph and not self.method.differentiable:
            raise RaydetectError(f"explainer {self.cfg.explainer} is not differentiable; use ig or saliency")
        cfg = self.cfg
        x = images.to(self.model.device, torch.float32)
        n = len(x)
        keys = np.arange(n) if keys is None else keys
        specs = view_specs(cfg)
        if draws is None and cfg.jitter > 0 and specs:
            draws = keyed_draws(x, len(specs), self.key)
        elif draws is None:
            draws = torch.zeros(n, len(specs), device=x.device)
        with torch.set_grad_enabled(create_graph):
            logits = self.model(x)
        t = logits.argmax(1).detach() if targets is None else targets.to(x.device)
        chunk = self._chunk(x)
        if cfg.baseline == "blur":  # the first view: a blur whose strength may be drawn per image
            base = view_fn(specs[0], cfg.jitter)(x, draws[:, 0])
        else:
            base = baselines(x, cfg, keys, twins, self.references)
        main = self._explain(x, base, t, logits, keys, chunk, create_graph)
        first_extra = len(specs) - len(cfg.views)
        for k, spec in enumerate(cfg.views):
            view = view_fn(spec, cfg.jitter)(x, draws[:, first_extra + k])
            main.views.append(self._explain(x, view, t, logits, keys, chunk, create_graph))
        return main

    def _chunk(self, x: torch.Tensor) -> int:
        """Scaled inputs per pass: the config's, else what the pass memory budget holds, else the device's
        default (CPU: as measured, at least two steps of the batch); never above a chunk that ran out of memory."""
        if not self._sized and not self.cfg.internal_batch_size:  # once: budget and bytes per input stay
            self._sized = True
            budget = pass_memory_budget(x.device)
            if budget is not None:
                fit = max(1, budget // pass_bytes_per_input(self.model, x))
                # A default budget (CUDA's) stays at most the fixed chunk it replaced; a given one is obeyed.
                self._budget_chunk = fit if os.environ.get(PASS_MEMORY_ENV) else min(fit, DEFAULT_CHUNK.get(x.device.type, 64))
        chunk = self.cfg.internal_batch_size or self._budget_chunk or max(DEFAULT_CHUNK.get(x.device.type, 64), 2 * len(x))
        return chunk if self.chunk_cap is None else min(chunk, self.chunk_cap)

    def _attribute(self, call: Call) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The method's attributions; out of memory, again at half the chunk, down to one input per pass."""
        while True:
            try:
                return self.attribute(call)
            except OOM_ERRORS:
                if call.chunk <= 1:
                    raise
                self.chunk_cap = call.chunk // 2
                log.warning("out of memory at %d inputs per gradient pass; trying %d", call.chunk, self.chunk_cap)
                if call.x.device.type == "cuda":
                    torch.cuda.empty_cache()
                call = replace(call, chunk=self.chunk_cap)

    def _explain(
        self, x: torch.Tensor, base: torch.Tensor, t: torch.Tensor, logits: torch.Tensor, keys: np.ndarray, chunk: int,
        create_graph: bool,
    ) -> Explanation:  # fmt: skip
        cfg = self.cfg
        attr, delta = self._attribute(Call(self.model, x, base, t, cfg, keys, min(chunk, self.chunk_cap or chunk), create_graph))
        mean_base = base.mean(0, keepdim=True).expand_as(x) if cfg.baseline == "train" else base
        with torch.set_grad_enabled(create_graph):
            baseline_logits = self.model(mean_base)
        if self.method.completeness:
            gain = (logits.gather(1, t.view(-1, 1)) - baseline_logits.gather(1, t.view(-1, 1))).squeeze(1)
            delta = attr.detach().flatten(1).sum(1) - gain.detach()
        if not create_graph:
            attr, logits, baseline_logits = attr.detach(), logits.detach(), baseline_logits.detach()
        return Explanation(attr, t, logits, baseline_logits, None if delta is None else delta.detach())
