"""Pair-aware splits: a clean image and its adversarial twin always land on the same side.

Otherwise a detector can score well by recognising the image rather than the attack. A pair's
side depends only on its id and the seed, so splits agree across attacks and re-runs.
"""

from __future__ import annotations

import hashlib

import numpy as np

from raydetect.errors import RaydetectError


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per key: the same pair lands on the same side in every run and attack."""
    out = np.empty(len(keys))
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2**64
    return out


def pair_split(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (rest, held_out): about ``fraction`` of the distinct pairs go to held_out, whole.

    The side of a pair depends only on its id and the seed, so splits agree across attacks (the
    transfer matrix never tests on an image its detector trained on) and across re-runs.
    """
    unique = np.unique(pairs)
    if len(unique) < 2:
        raise RaydetectError(f"need at least 2 image pairs to split; got {len(unique)}")
    u = _unit_hash(unique, seed)
    held = u < fraction
    if not held.any():
        held[np.argmin(u)] = True
    if held.all():
        held[np.argmax(u)] = False
    mask = np.isin(pairs, unique[held])
    return ~mask, mask


def grouped_folds(pairs: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, test) index arrays with every pair inside one fold."""
    unique = np.unique(pairs)
    if len(unique) < k:
        raise RaydetectError(f"need at least {k} pairs for {k}-fold cross-validation; got {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {p: i % k for i, p in enumerate(order)}
    fold = np.array([fold_of[p] for p in pairs])
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]
