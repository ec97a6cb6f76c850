"""A toy attack, written as a new attack is: one file with its update rule; its registry entry is
added by the test that uses it (tests/ray/test_toy_attack.py)."""

from __future__ import annotations

import torch

from raydetect.attacks.base import Attack, keyed_uniform


class SignNoise(Attack):
    """Random signs of size eps per pixel, keyed per image: no gradient, so it spends no pass."""

    def perturb(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        noise = keyed_uniform(self.keys, self.cfg.seed, tuple(x.shape[1:]), x.device).sign()
        return self.project(x + self.cfg.eps * noise, x)
