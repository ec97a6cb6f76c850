"""Feature descriptors: an attribution map of any size becomes a fixed-length vector.

The paper fed the *sorted* attribution values to its detector; its length then depends on the
image size. Here the sorted values are resampled to K quantiles, which keeps the shape of the
distribution and makes the length fixed. Other descriptors add summary statistics, how
concentrated the attribution mass is, and, as a control, the model's own logits alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from raydetect.attribution import Explanation
from raydetect.config import FeatureConfig

STATS = ("sum", "abs_sum", "pos_sum", "neg_sum", "mean", "std", "min", "max", "skew", "kurtosis", "l2", "frac_pos")
CONCENTRATION = ("top1pct", "top5pct", "top10pct", "top25pct", "entropy", "gini")
LOGITS = ("max_prob", "prob_margin", "max_logit", "logit_margin", "entropy", "logsumexp")
BASELINE_LOGITS = ("target_logit_drop", "target_prob_at_baseline", "baseline_agrees", "baseline_max_prob", "kl_input_baseline")
EPS = 1e-12


def sorted_quantiles(values: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) values -> (N, k): the sorted values linearly resampled at k evenly spaced ranks."""
    v, _ = values.sort(dim=1)
    m = v.shape[1]
    pos = torch.linspace(0, m - 1, k, dtype=torch.float64)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    frac = (pos - lo.double()).to(v.dtype)
    return v[:, lo] * (1 - frac) + v[:, hi] * frac


def _stats(flat: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (N, len(STATS)) moments of the channel-summed attribution map."""
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False)
    z = (flat - mean[:, None]) / (std[:, None] + EPS)
    pos = flat.clamp(min=0)
    return torch.stack(
        [
            flat.sum(1),
            flat.abs().sum(1),
            pos.sum(1),
            (flat - pos).sum(1),
            mean,
            std,
            flat.min(1).values,
            flat.max(1).values,
            (z**3).mean(1),
            (z**4).mean(1),
            flat.norm(dim=1),
            (flat > 0).to(flat.dtype).mean(1),
        ],
        dim=1,
    )


def _concentration(flat: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (N, 6): share of |attribution| in the top 1/5/10/25% pixels, entropy and Gini."""
    a, _ = flat.abs().sort(dim=1, descending=True)
    m = a.shape[1]
    total = a.sum(1, keepdim=True) + EPS
    p = a / total
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
        [top2p[:, 0], top2p[:, 0] - top2p[:, 1], top2l[:, 0], top2l[:, 0] - top2l[:, 1], entropy, logits.logsumexp(1)],
        dim=1,
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
    """(N, C, H, W) -> (N, G, H*W) with G = min(C, 3) contiguous channel groups summed."""
    n, c = attr.shape[:2]
    groups = min(c, 3)
    bounds = np.linspace(0, c, groups + 1).round().astype(int)
    return torch.stack([attr[:, a:b].sum(1).reshape(n, -1) for a, b in itertools.pairwise(bounds)], 1)


def feature_names(cfg: FeatureConfig, channels: int = 3) -> list[str]:
    """Column names of :func:`describe`'s output, in order."""
    k = cfg.quantiles
    names: list[str] = []
    for d in cfg.descriptors:
        if d == "signed_quantiles":
            names += [f"q{i}" for i in range(k)]
        elif d == "abs_quantiles":
            names += [f"absq{i}" for i in range(k)]
        elif d == "channel_quantiles":
            names += [f"c{g}q{i}" for g in range(min(channels, 3)) for i in range(k)]
        elif d == "stats":
            names += [f"stat_{s}" for s in STATS]
        elif d == "concentration":
            names += [f"conc_{s}" for s in CONCENTRATION]
        elif d == "logits":
            names += [f"logit_{s}" for s in LOGITS]
        elif d == "baseline_logits":
            names += [f"base_{s}" for s in BASELINE_LOGITS]
    return names


def describe(expl: Explanation, cfg: FeatureConfig) -> np.ndarray:
    """Descriptor vectors (N, D) float32 for a batch of explanations; D depends only on cfg and C."""
    attr = expl.attributions.double()
    n = attr.shape[0]
    flat = attr.sum(1).reshape(n, -1)  # channel-summed map, as in the paper's heatmaps
    parts: list[torch.Tensor] = []
    for d in cfg.descriptors:
        if d == "signed_quantiles":
            parts.append(sorted_quantiles(flat, cfg.quantiles))
        elif d == "abs_quantiles":
            parts.append(sorted_quantiles(flat.abs(), cfg.quantiles))
        elif d == "channel_quantiles":
            groups = _channel_groups(attr)
            parts.append(torch.cat([sorted_quantiles(groups[:, g], cfg.quantiles) for g in range(groups.shape[1])], 1))
        elif d == "stats":
            parts.append(_stats(flat))
        elif d == "concentration":
            parts.append(_concentration(flat))
        elif d == "logits":
            parts.append(_logit_stats(expl.logits.double()))
        elif d == "baseline_logits":
            parts.append(_baseline_stats(expl.logits.double(), expl.baseline_logits.double(), expl.targets))
    out = torch.cat(parts, 1).numpy().astype(np.float32)
    # Saturated logits can overflow float32 statistics; a detector needs finite inputs.
    return np.nan_to_num(out, nan=0.0, posinf=np.finfo(np.float32).max, neginf=np.finfo(np.float32).min)
