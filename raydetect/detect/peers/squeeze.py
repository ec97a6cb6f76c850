"""Feature squeezing (Xu, Evans and Qi, NDSS 2018): how far the prediction moves when the image is squeezed.

Score = the largest L1 distance between the softmax of the image and of each squeezed copy; the
paper thresholds it at a clean false-positive rate, with no other training. The ImageNet squeezers
are 5-bit colour depth, a 2x2 median filter and non-local means 11-3-4. Bit depth passes gradients
straight through (BPDA); the median and non-local means are differentiable as written.

Non-local means here is plain RGB NLM in torch (patch distance in 0-255 units, weight exp(-d/h^2)),
not OpenCV's Lab-space ``fastNlMeansDenoisingColored`` that the paper called: same windows and
strength, a close kin rather than the identical filter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raydetect import registry
from raydetect.config import FeatureConfig
from raydetect.detect.peers import Peer
from raydetect.explain.views import bit_depth


def median_even(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k rank filter as scipy's ``median_filter(size=k)``: rank k*k//2 of each window (for even k
    the upper middle value, windows reaching k//2 pixels back), edges repeated."""
    before, after = k // 2, (k - 1) // 2
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (before, after, before, after), mode="replicate"), k)  # (N, C*k*k, H*W)
    return patches.view(n, c, k * k, h * w).sort(2).values[:, :, (k * k) // 2].view(n, c, h, w)


def nl_means(x: torch.Tensor, search: int, patch: int, h: float) -> torch.Tensor:
    """Non-local means: each pixel the weighted mean of the pixels in its search window, weighted by
    exp(-d / h^2) with d the mean squared difference of their patches (0-255 units)."""
    r, p = search // 2, patch // 2
    pad = F.pad(x, (r, r, r, r), mode="reflect")
    hh, ww = x.shape[-2:]
    num = torch.zeros_like(x)
    den = torch.zeros_like(x[:, :1])
    for dy in range(search):
        for dx in range(search):
            shifted = pad[:, :, dy : dy + hh, dx : dx + ww]
            d = ((x - shifted) * 255).pow(2).mean(1, keepdim=True)
            d = F.avg_pool2d(d, patch, stride=1, padding=p, count_include_pad=False)
            wgt = torch.exp(-d / (h * h))
            num = num + wgt * shifted
            den = den + wgt
    return num / den


def squeeze(x: torch.Tensor, spec: str) -> torch.Tensor:
    kind, v = registry.squeezer(spec)
    if kind == "bits":
        return bit_depth(x, v[0])
    if kind == "median":
        return median_even(x, v[0])
    return nl_means(x, v[0], v[1], float(v[2]))


class FeatureSqueezing(Peer):
    @staticmethod
    def views(cfg: FeatureConfig) -> list:
        """Each squeezer: what squeeze_eot makes adversarial too (the known attack on squeezing, He et al. 2017)."""
        return [lambda x, u, s=s: squeeze(x, s) for s in cfg.squeezers]

    def features(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        with torch.set_grad_enabled(create_graph):
            p = self.model(x).double().softmax(1)
            dists = [(p - self.model(squeeze(x, s)).double().softmax(1)).abs().sum(1) for s in self.cfg.squeezers]
        return torch.stack(dists, 1).max(1, keepdim=True).values  # (N, 1)
