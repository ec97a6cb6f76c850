"""Feature descriptors: an attribution map of any size becomes a fixed-length vector.

The paper fed the *sorted* attribution values to its detector; its length then depends on the
image size. Here the sorted values are resampled to K quantiles, which keeps the shape of the
distribution and makes the length fixed. Other descriptors add summary statistics, how
concentrated the attribution mass is, and, as a control, the model's own logits alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raydetect.attribution import Explanation
from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.models import ImageClassifier, set_threads

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


CHANNEL_GROUPS = 3


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


def feature_names(cfg: FeatureConfig) -> list[str]:
    """Column names of :func:`describe`'s output, in order."""
    k = cfg.quantiles
    names: list[str] = []
    for d in cfg.descriptors:
        if d == "signed_quantiles":
            names += [f"q{i}" for i in range(k)]
        elif d == "abs_quantiles":
            names += [f"absq{i}" for i in range(k)]
        elif d == "channel_quantiles":
            names += [f"c{g}q{i}" for g in range(CHANNEL_GROUPS) for i in range(k)]
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


# --------------------------------------------------------------------------------------------
# Ray Data stage
#
# Input: rows of the attack job (a lossless ``png`` per row) or of read_source (an ``image``
# array). Output: one row per explained image with its descriptor vector in ``features``.

FEATURE_COLUMNS = (
    "id", "pair_id", "kind", "path", "label", "attack", "method", "mode", "eps", "steps", "status", "error",
    "pred", "conf", "correct", "success", "features", "map",
)  # fmt: skip


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def load_map(blob: bytes) -> np.ndarray:
    """Inverse of the ``map`` column encoding (channel-summed attribution, float16 .npy bytes)."""
    import io

    return np.load(io.BytesIO(blob), allow_pickle=False)


class FeatureStage:
    """Loads the model once, explains each row's image and writes its descriptor.

    Adversarial rows whose attack failed are passed through as ``skipped`` (nothing to detect);
    error rows pass through untouched. With the paper's ``pair`` baseline, rows are grouped by
    ``pair_id`` within the batch (use ``groupby('pair_id')`` upstream) and every clean image is
    explained once per attack, against that attack's adversarial twin.
    """

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attribution: AttributionConfig,
        features: FeatureConfig,
        references: np.ndarray | None = None,
        maps_fraction: float = 0.0,
        threads: int | None = None,
        batch_size: int = 16,
    ) -> None:
        from raydetect.attribution import Explainer

        # Threads are set in __call__, not here: see set_threads.
        self.threads = threads
        self.model = model_loader()
        self.explainer = Explainer(self.model, attribution, None if references is None else torch.from_numpy(references))
        self.attribution = attribution
        self.cfg = features
        self.maps_fraction = maps_fraction
        self.batch_size = batch_size
        self.dim = len(feature_names(features))

    def _image(self, batch: dict[str, np.ndarray], i: int) -> np.ndarray:
        from raydetect.data import decode_png

        if "png" in batch:
            return decode_png(batch["png"][i])
        return np.asarray(batch["image"][i], dtype=np.float32)

    def _base_row(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        def get(col: str, default: Any) -> Any:
            if col not in batch:
                return default
            value = batch[col][i]
            return value.item() if isinstance(value, np.generic) else value

        return {
            "id": str(batch["id"][i]),
            "pair_id": str(get("pair_id", batch["id"][i])),
            "kind": str(get("kind", "clean")),
            "path": str(get("path", "")),
            "label": int(get("label", -1)),
            "attack": str(get("attack", "")),
            "method": str(get("method", "")),
            "mode": str(get("mode", "")),
            "eps": float(get("eps", 0.0)),
            "steps": int(get("steps", 0)),
            "status": str(get("status", "ok")),
            "error": str(get("error", "")),
            "pred": -1,
            "conf": 0.0,
            "correct": bool(get("correct", False)),
            "success": bool(get("success", False)),
            "features": np.zeros(self.dim, np.float32),
            "map": b"",
        }

    def _jobs(
        self, batch: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]]]:
        """(rows that pass through unexplained, rows to explain with image and optional twin)."""
        n = len(batch["id"])
        passthrough: list[dict[str, Any]] = []
        todo: list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]] = []
        rows = [self._base_row(batch, i) for i in range(n)]
        for r in rows:
            if r["status"] == "ok" and r["kind"] == "adversarial" and not r["success"]:
                r["status"], r["error"] = "skipped", "attack did not succeed; nothing to detect"
        if self.attribution.baseline != "pair":
            for i, r in enumerate(rows):
                if r["status"] == "ok":
                    todo.append((r, self._image(batch, i), None))
                else:
                    passthrough.append(r)
            return passthrough, todo
        # Paper protocol: each clean image against each successful twin, and the twin against it.
        by_pair: dict[str, dict[str, list[int]]] = {}
        for i, r in enumerate(rows):
            if r["status"] != "ok":
                passthrough.append(r)
                continue
            by_pair.setdefault(r["pair_id"], {"clean": [], "adversarial": []})[r["kind"]].append(i)
        for group in by_pair.values():
            if group["clean"] and not group["adversarial"]:
                for i in group["clean"]:
                    rows[i]["status"], rows[i]["error"] = "skipped", "no adversarial twin to explain against (paper protocol)"
                    passthrough.append(rows[i])
                continue
            if not group["clean"]:
                for i in group["adversarial"]:
                    rows[i]["status"], rows[i]["error"] = "skipped", "no clean twin in this group (paper protocol)"
                    passthrough.append(rows[i])
                continue
            c = group["clean"][0]
            clean_img = self._image(batch, c)
            for i in group["adversarial"]:
                adv_img = self._image(batch, i)
                clean_row = {**rows[c], "id": f"{rows[c]['pair_id']}|clean|{rows[i]['attack']}"}
                clean_row.update({k: rows[i][k] for k in ("attack", "method", "mode", "eps", "steps")})
                todo.append((clean_row, clean_img, adv_img))
                todo.append((rows[i], adv_img, clean_img))
        return passthrough, todo

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        """Numpy batch in, pyarrow Table out (``features`` as a fixed-size list column)."""
        from raydetect.attacks import stable_key
        from raydetect.data import rows_to_table

        set_threads(self.threads)
        out, todo = self._jobs(batch)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            x = torch.from_numpy(np.stack([img for _, img, _ in chunk]))
            twins = None if chunk[0][2] is None else torch.from_numpy(np.stack([t for _, _, t in chunk]))  # type: ignore[misc]
            keys = np.array([stable_key(r["pair_id"] if r["kind"] == "clean" else r["id"]) for r, _, _ in chunk])
            expl = self.explainer(x, keys=keys, twins=twins)
            feats = describe(expl, self.cfg)
            probs = expl.logits.softmax(1)
            for j, (row, _, _) in enumerate(chunk):
                row["features"] = feats[j]
                row["pred"] = int(expl.targets[j])
                row["conf"] = float(probs[j, expl.targets[j]])
                if self.maps_fraction > 0 and (keys[j] % 10_000) < self.maps_fraction * 10_000:
                    row["map"] = _npy_bytes(expl.attributions[j].sum(0).numpy())
                out.append(row)
        return rows_to_table(out)


def feature_dataset(
    ds: Any,
    model_loader: Callable[[], ImageClassifier],
    attribution: AttributionConfig,
    features: FeatureConfig,
    plan: Any,
    references: np.ndarray | None = None,
    maps_fraction: float = 0.0,
) -> Any:
    """Ray Data stage: attack-job rows (or image rows) -> descriptor rows, on an actor pool."""
    from raydetect.pipeline import map_actors

    args = (model_loader, attribution, features, references, maps_fraction, plan.threads, plan.batch_size)
    if attribution.baseline == "pair":
        import ray

        from raydetect.models import actor_runtime_env

        # The paper's protocol needs each clean image beside its twins: one group per pair.
        return ds.groupby("pair_id").map_groups(
            FeatureStage,
            fn_constructor_args=args,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.num_actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            runtime_env=actor_runtime_env(),
        )
    return map_actors(ds, FeatureStage, args, plan)


class AttackFeatureStage:
    """Attack and explain in one actor: :class:`AttackStage` then :class:`FeatureStage`, one model.

    One pass over the data with one actor pool, so one model load and no Parquet round trip
    between the stages; rows carry the attack outcome (kind, success, correct), which is all
    Table 1 needs. ``keep_png`` also keeps each row's image (clean or adversarial).
    """

    def __init__(
        self,
        model_loader: Callable[[], ImageClassifier],
        attacks: Any,
        attribution: AttributionConfig,
        features: FeatureConfig,
        only_correct: bool = True,
        threads: int | None = None,
        batch_size: int = 16,
        keep_png: bool = False,
    ) -> None:
        from raydetect.attacks import AttackStage

        self.attack = AttackStage(model_loader, attacks, only_correct, threads)
        model = self.attack.model
        self.explain = FeatureStage(lambda: model, attribution, features, None, 0.0, threads, batch_size)
        self.keep_png = keep_png

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        attacked = self.attack(batch)
        table = self.explain(attacked)
        if self.keep_png and table.num_rows:
            png = dict(zip(attacked["id"], attacked["png"], strict=True))
            table = table.append_column("png", pa.array([png[i] for i in table.column("id").to_pylist()], pa.binary()))
        return table


def attack_feature_dataset(
    ds: Any,
    model_loader: Callable[[], ImageClassifier],
    attacks: Any,
    attribution: AttributionConfig,
    features: FeatureConfig,
    plan: Any,
    only_correct: bool = True,
    keep_png: bool = False,
) -> Any:
    """Ray Data stage: image rows -> clean and adversarial descriptor rows, in one actor pool."""
    from raydetect.pipeline import map_actors

    args = (model_loader, tuple(attacks), attribution, features, only_correct, plan.threads, plan.batch_size, keep_png)
    return map_actors(ds, AttackFeatureStage, args, plan)
