"""Descriptor rows as the feature job writes them, selected per attack for fitting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raydetect.errors import RaydetectError


@dataclass
class FeatureSet:
    """Descriptor rows with status ok. Clean rows with an empty ``attack`` are shared by every
    attack (corrected protocol); the paper protocol's clean rows name the attack of their twin."""

    X: np.ndarray  # (N, D) float32
    kind: np.ndarray  # (N,) "clean" | "adversarial"
    pair: np.ndarray  # (N,) pair id (the clean image's id)
    attack: np.ndarray  # (N,) attack name, "" for shared clean rows

    @classmethod
    def from_table(cls, table: Any) -> FeatureSet:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column("status"), "ok"))
        if table.num_rows == 0:
            raise RaydetectError("no usable feature rows (status ok)")
        # Part files come back in a different order every run; the forests' bootstrap depends on
        # row order, so sort to make a re-run on the same features fit the same detector.
        table = table.sort_by("id") if "id" in table.column_names else table
        col = table.column("features")
        X = np.asarray(col.combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32).reshape(table.num_rows, -1)

        def arr(name: str) -> np.ndarray:
            return np.asarray(table.column(name).to_pylist(), dtype=object)

        return cls(X, arr("kind"), arr("pair_id"), arr("attack"))

    @property
    def attacks(self) -> list[str]:
        return sorted({a for a, k in zip(self.attack, self.kind, strict=True) if k == "adversarial"})

    def for_attacks(self, attacks: list[str], paired: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, pairs) of the given attacks' adversarial rows and their clean twins.

        Only pairs with a successful adversarial image take part, so classes stay paired. Unpaired
        images (``paired=False``: clean and adversarial sets with no link, ``pair`` a near-duplicate
        group) have no twins: every clean row takes part.
        """
        adv = (self.kind == "adversarial") & np.isin(self.attack, attacks)
        pairs = set(self.pair[adv])
        shared = np.isin(self.attack, attacks) | (self.attack == "")
        clean = (self.kind == "clean") & shared & (np.isin(self.pair, list(pairs)) if paired else True)
        idx = np.flatnonzero(adv | clean)
        y = (self.kind[idx] == "adversarial").astype(np.int64)
        return self.X[idx], y, self.pair[idx].astype(str)
