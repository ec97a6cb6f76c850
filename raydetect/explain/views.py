"""Views of an image a detector compares it with: blur, median filter, JPEG, bit-depth reduction.

Each view is a torch function of the image and of one uniform draw u in [0, 1) per image, which
scales the view's strength by exp(jitter * (2u - 1)). The draws come from a keyed hash of the
image's 8-bit pixels and the auditor's secret (``RAYDETECT_SECRET``): the same image always gets
the same view for its auditor, while an attacker without the secret must average over them.
Views that are not differentiable (JPEG, bit depth) pass gradients straight through.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydetect.config import AttributionConfig
from raydetect.images import jpeg_roundtrip

PUBLIC_KEY = b"raydetect-public"  # used when no secret is set: reproducible, but known to everyone

# (images (N, C, H, W), draws (N,) in [0, 1)) -> views (N, C, H, W)
ViewFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; the kernel never exceeds the image."""
    radius = max(1, min(int(math.ceil(3 * sigma)), (min(x.shape[-2:]) - 1) // 2))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    h = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(h, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median with reflect padding (its gradient flows to each window's median pixel)."""
    r = k // 2
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), k)  # (N, C*k*k, H*W)
    return patches.view(n, c, k * k, h * w).median(2).values.view(n, c, h, w)


class _StraightThrough(torch.autograd.Function):
    """Forward: a non-differentiable transform's output; backward: the identity (BPDA)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def jpeg(x: torch.Tensor, quality: int | list[int]) -> torch.Tensor:
    return _StraightThrough.apply(x, jpeg_roundtrip(x, quality))


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    return _StraightThrough.apply(x, torch.round(x.detach() * levels) / levels)


def _scaled(value: float, jitter: float, u: torch.Tensor) -> list[float]:
    return (value * torch.exp(jitter * (2 * u.detach().float().cpu() - 1))).tolist()


def by_strength(x: torch.Tensor, strengths: list[Any], fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> torch.Tensor:
    """``fn(x[i], strengths[i])`` for every image, one call per distinct strength (a median's few kernel
    sizes are a few batched calls, not one per image); differentiable, in the images' order."""
    groups: dict[Any, list[int]] = {}
    for i, v in enumerate(strengths):
        groups.setdefault(v, []).append(i)
    if len(groups) == 1:
        return fn(x, strengths[0])
    order = [i for idx in groups.values() for i in idx]
    out = torch.cat([fn(x[idx], v) for v, idx in groups.items()])
    return out[torch.argsort(torch.tensor(order, device=x.device))]


def view_fn(spec: str, jitter: float) -> ViewFn:
    """The view ``kind:parameter`` with per-image strength drawn from ``u``."""
    kind, _, param = spec.partition(":")
    value = float(param)

    def strengths(x: torch.Tensor, u: torch.Tensor) -> list[float]:
        return [value] * len(x) if jitter == 0 else _scaled(value, jitter, u)

    if kind == "blur":
        return lambda x, u: by_strength(x, strengths(x, u), gaussian_blur)
    if kind == "median":
        return lambda x, u: by_strength(x, [max(3, 2 * round(k / 2 - 0.5) + 1) for k in strengths(x, u)], median_filter)
    if kind == "jpeg":  # every image's own quality in one encoding pass: one copy off the device and back
        return lambda x, u: jpeg(x, [min(95, max(5, round(q))) for q in strengths(x, u)])
    return lambda x, u: by_strength(x, [min(7, max(1, round(b))) for b in strengths(x, u)], bit_depth)


def view_specs(cfg: AttributionConfig) -> list[str]:
    """Every view the explanation uses: the IG baseline when it is one (blur), then the extra views."""
    main = [f"blur:{cfg.blur_sigma:g}"] if cfg.baseline == "blur" else []
    return main + list(cfg.views)


def secret() -> bytes:
    """The auditor's key: ``RAYDETECT_SECRET`` of *this* process, else the public key."""
    value = os.environ.get("RAYDETECT_SECRET")
    return value.encode() if value else PUBLIC_KEY


def key_fingerprint(key: bytes) -> str:
    """What a report may show of a key: "public", or 8 hex digits that tell secrets apart. scrypt, so
    that whoever reads a report cannot cheaply test guesses of a weak secret against it."""
    if key == PUBLIC_KEY:
        return "public"
    return hashlib.scrypt(key, salt=b"raydetect-views-key", n=2**14, r=8, p=1, dklen=4).hex()


def keyed_draws(x: torch.Tensor, count: int, key: bytes | None = None) -> torch.Tensor:
    """(N, count) uniform draws per image from its 8-bit pixels and the auditor's key."""
    key = secret() if key is None else key
    pixels = torch.round(x.detach().float().cpu() * 255).to(torch.uint8).numpy()
    out = np.empty((len(x), count))
    for i, img in enumerate(pixels):
        digest = hashlib.blake2b(img.tobytes(), key=key[:64], digest_size=8 * count).digest()
        out[i] = np.frombuffer(digest, dtype=">u8").astype(np.float64) / 2.0**64
    return torch.from_numpy(out).to(x.device, torch.float32)
