"""Detector heads: descriptor rows (N, D) -> P(adversarial), in torch, stored without pickle.

One scoring code path for every kind, used by ``Detector.score``, the audit and the adaptive
attack. ``lr`` is exact and differentiable; ``rf`` and ``xgboost`` are evaluated by walking
their trees in torch (piecewise constant: an attacker differentiates a surrogate instead).

Stored forms load without executing code: logistic regression as JSON (scaler and weights),
random forests as an ``.npz`` of node arrays (allow_pickle=False), XGBoost in XGBoost's own
JSON, parsed here (scoring needs no xgboost).
"""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raydetect.errors import RaydetectError


class Head(nn.Module):
    """Base: ``logit(X)`` (N,) float64 log-odds; ``forward(X)`` P(adversarial)."""

    kind: ClassVar[str]
    file: ClassVar[str]
    differentiable: ClassVar[bool] = False

    def logit(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """numpy in, numpy out: P(adversarial) per descriptor row."""
        device = next(iter(self.buffers())).device
        X = np.asarray(X, np.float32)
        X = X if X.flags.writeable else X.copy()  # Arrow-backed rows are read-only, which torch warns about
        with torch.no_grad():
            return self(torch.as_tensor(X, device=device)).cpu().numpy()

    def to_bytes(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        raise NotImplementedError


class LinearHead(Head):
    """Standardise, then logistic regression."""

    kind = "lr"
    file = "model_lr.json"
    differentiable = True

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> None:
        super().__init__()
        for name, value in (("mean", mean), ("scale", scale), ("coef", coef)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float64)))
        self.register_buffer("intercept", torch.tensor(float(intercept), dtype=torch.float64))

    def logit(self, X: torch.Tensor) -> torch.Tensor:
        return ((X.double() - self.mean) / self.scale) @ self.coef + self.intercept

    def to_bytes(self) -> bytes:
        data = {k: getattr(self, k).cpu().tolist() for k in ("mean", "scale", "coef")}
        return json.dumps({**data, "intercept": float(self.intercept)}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        d = json.loads(data)
        return cls(np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["coef"]), d["intercept"])


class _Trees(Head):
    """Trees as flat node arrays; subclasses say how a node splits and how leaves combine."""

    depth: int

    def _arrays(self, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            self.register_buffer(name, torch.as_tensor(value))

    def _leaves(self, X: torch.Tensor) -> torch.Tensor:
        """(trees, N) index of the leaf each row reaches in each tree."""
        node = self.roots[:, None].expand(-1, len(X))
        rows = torch.arange(len(X), device=X.device).expand_as(node)
        for _ in range(self.depth):
            leaf = self.left[node] == -1
            node = torch.where(
                leaf, node, torch.where(self._go_left(X[rows, self.feature[node]], node), self.left[node], self.right[node])
            )
        return node

    def _go_left(self, x: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ForestHead(_Trees):
    """A random forest; predicts like sklearn (float32 inputs compared in float64, <= goes left)."""

    kind = "rf"
    file = "model_rf.npz"
    NAMES = ("left", "right", "feature", "threshold", "value", "roots")

    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 value: np.ndarray, roots: np.ndarray, depth: int) -> None:  # fmt: skip
        super().__init__()
        self._arrays(left=np.asarray(left, np.int64), right=np.asarray(right, np.int64), feature=np.asarray(feature, np.int64),
                     threshold=np.asarray(threshold, np.float64), value=np.asarray(value, np.float64),
                     roots=np.asarray(roots, np.int64))  # fmt: skip
        self.depth = int(depth)

    @classmethod
    def from_sklearn(cls, forest: Any) -> ForestHead:
        lefts, rights, feats, thrs, vals, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for est in forest.estimators_:
            t = est.tree_
            leaf = t.children_left == -1
            lefts.append(np.where(leaf, -1, t.children_left + offset))
            rights.append(np.where(leaf, -1, t.children_right + offset))
            feats.append(np.where(leaf, 0, t.feature))
            thrs.append(t.threshold)
            v = t.value[:, 0, :]
            vals.append(v[:, 1] / np.maximum(v.sum(1), 1e-300))  # P(class 1) at each node
            roots.append(offset)
            offset += t.node_count
            depth = max(depth, t.max_depth)
        cat = np.concatenate
        return cls(cat(lefts), cat(rights), cat(feats), cat(thrs), cat(vals), np.asarray(roots), depth)

    def _go_left(self, x: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        return x.float().double() <= self.threshold[node]  # sklearn trees compare float32 inputs

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.value[self._leaves(X)].mean(0)

    def logit(self, X: torch.Tensor) -> torch.Tensor:
        p = self(X).clamp(1e-12, 1 - 1e-12)
        return torch.log(p) - torch.log1p(-p)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self, k).cpu().numpy() for k in self.NAMES}, depth=np.asarray(self.depth))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ForestHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as d:
            return cls(*(d[k] for k in cls.NAMES), int(d["depth"]))


class BoosterHead(_Trees):
    """Gradient-boosted trees from XGBoost's JSON model: margin = base + sum of leaves.

    XGBoost sends x < split_condition left (float32), and missing values the default way.
    """

    kind = "xgboost"
    file = "model_xgboost.json"

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw
        try:
            learner = json.loads(raw)["learner"]
            if learner["objective"]["name"] != "binary:logistic":
                raise ValueError(f"objective {learner['objective']['name']}, not binary:logistic")
            base = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
            trees = learner["gradient_booster"]["model"]["trees"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RaydetectError(f"not an XGBoost binary:logistic model: {exc}") from exc
        lefts, rights, feats, conds, dlefts, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for t in trees:
            left = np.asarray(t["left_children"], np.int64)
            leaf = left == -1
            lefts.append(np.where(leaf, -1, left + offset))
            rights.append(np.where(leaf, -1, np.asarray(t["right_children"], np.int64) + offset))
            feats.append(np.where(leaf, 0, np.asarray(t["split_indices"], np.int64)))
            conds.append(np.asarray(t["split_conditions"], np.float32))  # leaves: the leaf value
            dlefts.append(np.asarray(t["default_left"], bool))
            roots.append(offset)
            offset += len(left)
            depth = max(depth, _depth(left, np.asarray(t["right_children"], np.int64)))
        cat = np.concatenate
        self._arrays(left=cat(lefts), right=cat(rights), feature=cat(feats), cond=cat(conds), default_left=cat(dlefts),
                     roots=np.asarray(roots, np.int64))  # fmt: skip
        self.depth = depth
        self.base_margin = float(np.log(base) - np.log1p(-base))

    def _go_left(self, x: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.where(torch.isnan(x), self.default_left[node], x < self.cond[node])

    def logit(self, X: torch.Tensor) -> torch.Tensor:
        return self.cond[self._leaves(X)].double().sum(0) + self.base_margin

    def to_bytes(self) -> bytes:
        return self.raw

    @classmethod
    def from_bytes(cls, data: bytes) -> BoosterHead:
        return cls(data)


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, frontier = 0, [0]
    while True:
        frontier = [c for n in frontier for c in (left[n], right[n]) if c != -1]
        if not frontier:
            return depth
        depth += 1


HEADS: dict[str, type[Head]] = {h.kind: h for h in (LinearHead, ForestHead, BoosterHead)}
