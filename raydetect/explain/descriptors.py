"""Descriptors: an explanation of any size becomes a fixed-length vector, in torch.

One registry maps each descriptor name to its column names and its function, so the two can
never drift apart. Everything is differentiable (sorting included), so an attacker's gradient
can flow from the detector back to the image; the detector sees exactly these numbers.

The paper fed the *sorted* attribution values to its detector; its length then depends on the
image size. Here the sorted values are resampled to K quantiles, which keeps the shape of the
distribution and makes the length fixed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raydetect import registry
from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.explain.explainers import Explanation

STATS = ("sum", "abs_sum", "pos_sum", "neg_sum", "mean", "std", "min", "max", "skew", "kurtosis", "l2", "frac_pos")
CONCENTRATION = ("top1pct", "top5pct", "top10pct", "top25pct", "entropy", "gini")
LOGITS = ("max_prob", "prob_margin", "max_logit", "logit_margin", "entropy", "logsumexp")
BASELINE_LOGITS = ("target_logit_drop", "target_prob_at_baseline", "baseline_agrees", "baseline_max_prob", "kl_input_baseline")
CHANNEL_GROUPS = 3
EPS = 1e-12


def sorted_quantiles(values: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) values -> (N, k): the sorted values linearly resampled at k evenly spaced ranks."""
    v, _ = values.sort(dim=1)
    m = v.shape[1]
    pos = torch.linspace(0, m - 1, k, dtype=torch.float64)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    frac = (pos - lo.double()).to(v.dtype).to(v.device)
    return v[:, lo.to(v.device)] * (1 - frac) + v[:, hi.to(v.device)] * frac


def _stats(flat: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (N, len(STATS)) moments of the channel-summed attribution map."""
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False)
    z = (flat - mean[:, None]) / (std[:, None] + EPS)
    pos = flat.clamp(min=0)
    return torch.stack(
        [
            flat.sum(1), flat.abs().sum(1), pos.sum(1), (flat - pos).sum(1), mean, std, flat.min(1).values,
            flat.max(1).values, (z**3).mean(1), (z**4).mean(1), flat.norm(dim=1), (flat > 0).to(flat.dtype).mean(1),
        ],
        dim=1,
    )  # fmt: skip


def _concentration(flat: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (N, 6): share of |attribution| in the top 1/5/10/25% pixels, entropy and Gini."""
    a, _ = flat.abs().sort(dim=1, descending=True)
    m = a.shape[1]
    p = a / (a.sum(1, keepdim=True) + EPS)
    cum = p.cumsum(1)
    tops = [cum[:, max(1, int(round(q * m))) - 1] for q in (0.01, 0.05, 0.10, 0.25)]
    entropy = -(p * (p + EPS).log()).sum(1) / np.log(max(m, 2))
    # Gini of the ascending values: 1 - 2 * area under the Lorenz curve.
    asc = p.flip(1).cumsum(1)
    gini = 1 - 2 * (asc.sum(1) - 0.5) / m
    return torch.stack([*tops, entropy, gini], dim=1)


def _logit_stats(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, 6) confidence statistics: the control that uses no explanation at all."""
    probs = logits.softmax(1)
    top2p = probs.topk(2, dim=1).values
    top2l = logits.topk(2, dim=1).values
    entropy = -(probs * (probs + EPS).log()).sum(1)
    return torch.stack(
        [top2p[:, 0], top2p[:, 0] - top2p[:, 1], top2l[:, 0], top2l[:, 0] - top2l[:, 1], entropy, logits.logsumexp(1)], dim=1
    )


def _baseline_stats(logits: torch.Tensor, base_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, 5): how the explained class fares at the IG baseline (the path's start)."""
    idx = targets.view(-1, 1)
    p = logits.log_softmax(1)
    q = base_logits.log_softmax(1)
    return torch.stack(
        [
            (logits.gather(1, idx) - base_logits.gather(1, idx)).squeeze(1),
            q.gather(1, idx).exp().squeeze(1),
            (base_logits.argmax(1) == targets).to(logits.dtype),
            q.exp().max(1).values,
            (p.exp() * (p - q)).sum(1),
        ],
        dim=1,
    )


def _channel_groups(attr: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 3, H*W): three contiguous channel groups, each summed.

    Always three groups (RGB inputs: one per colour; layers: thirds of their channels), so the
    descriptor length never depends on the explainer's layer; a grey image repeats its channel.
    """
    n, c = attr.shape[:2]
    if c < CHANNEL_GROUPS:
        return torch.stack([attr[:, min(g, c - 1)].reshape(n, -1) for g in range(CHANNEL_GROUPS)], 1)
    bounds = np.linspace(0, c, CHANNEL_GROUPS + 1).round().astype(int)
    return torch.stack([attr[:, a:b].sum(1).reshape(n, -1) for a, b in itertools.pairwise(bounds)], 1)


@dataclass(frozen=True)
class Inputs:
    """What descriptors read, in float64: the map, its channel sum, and the logits."""

    attr: torch.Tensor  # (N, C, H, W)
    flat: torch.Tensor  # (N, H*W) channel-summed map, as in the paper's heatmaps
    expl: Explanation


@dataclass(frozen=True)
class Descriptor:
    names: Callable[[FeatureConfig], list[str]]
    compute: Callable[[Inputs, FeatureConfig], torch.Tensor]


def _channel_quantiles(d: Inputs, cfg: FeatureConfig) -> torch.Tensor:
    groups = _channel_groups(d.attr)
    return torch.cat([sorted_quantiles(groups[:, g], cfg.quantiles) for g in range(groups.shape[1])], 1)


DESCRIPTORS: dict[str, Descriptor] = {
    "signed_quantiles": Descriptor(
        lambda cfg: [f"q{i}" for i in range(cfg.quantiles)], lambda d, cfg: sorted_quantiles(d.flat, cfg.quantiles)
    ),
    "abs_quantiles": Descriptor(
        lambda cfg: [f"absq{i}" for i in range(cfg.quantiles)], lambda d, cfg: sorted_quantiles(d.flat.abs(), cfg.quantiles)
    ),
    "channel_quantiles": Descriptor(
        lambda cfg: [f"c{g}q{i}" for g in range(CHANNEL_GROUPS) for i in range(cfg.quantiles)], _channel_quantiles
    ),
    "stats": Descriptor(lambda cfg: [f"stat_{s}" for s in STATS], lambda d, cfg: _stats(d.flat)),
    "concentration": Descriptor(lambda cfg: [f"conc_{s}" for s in CONCENTRATION], lambda d, cfg: _concentration(d.flat)),
    "logits": Descriptor(lambda cfg: [f"logit_{s}" for s in LOGITS], lambda d, cfg: _logit_stats(d.expl.logits.double())),
    "baseline_logits": Descriptor(
        lambda cfg: [f"base_{s}" for s in BASELINE_LOGITS],
        lambda d, cfg: _baseline_stats(d.expl.logits.double(), d.expl.baseline_logits.double(), d.expl.targets),
    ),
}

_F32 = torch.finfo(torch.float32)


def _view_descriptors(cfg: FeatureConfig) -> list[str]:
    """What each extra view adds: its map's descriptors and its baseline's logits (the image's own
    logits are the same for every view)."""
    return [d for d in cfg.descriptors if d != "logits"]


def feature_names(cfg: FeatureConfig, attribution: AttributionConfig | None = None) -> list[str]:
    """Column names of a detector's features, in order: :func:`describe`'s output (extra views prefixed
    v1_, v2_, ...) unless the explanation is off, then each peer's (``registry.PEERS``)."""
    names = []
    if cfg.explanation:
        names = [name for d in cfg.descriptors for name in DESCRIPTORS[d].names(cfg)]
        for k in range(len(attribution.views) if attribution else 0):
            names += [f"v{k + 1}_{name}" for d in _view_descriptors(cfg) for name in DESCRIPTORS[d].names(cfg)]
    return names + [name for p in cfg.peers for name in registry.PEERS[p].names(cfg)]


def _describe(expl: Explanation, cfg: FeatureConfig, descriptors: list[str]) -> torch.Tensor:
    attr = expl.attributions.double()
    d = Inputs(attr, attr.sum(1).reshape(len(attr), -1), expl)
    return torch.cat([DESCRIPTORS[name].compute(d, cfg) for name in descriptors], 1)


def describe(expl: Explanation, cfg: FeatureConfig) -> torch.Tensor:
    """Descriptor vectors (N, D) float32 for a batch of explanations; D depends only on the configs.

    Computed in float64, returned in float32 as stored. Saturated logits can overflow float32
    statistics; a detector needs finite inputs, so those become the largest float32.
    """
    parts = [_describe(expl, cfg, list(cfg.descriptors))] + [_describe(v, cfg, _view_descriptors(cfg)) for v in expl.views]
    return torch.nan_to_num(torch.cat(parts, 1).float(), nan=0.0, posinf=_F32.max, neginf=_F32.min)
