"""Detectors over explanation descriptors: fitting, pair-aware splits, thresholds and metrics.

A clean image and its adversarial twin always land on the same side of every split (grouped by
``pair``), otherwise a detector can score well by recognising the image rather than the attack.
The decision threshold is chosen on held-out *clean* validation images for a target
false-positive rate, which is how a detector is operated in practice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raydetect.config import DetectorConfig
from raydetect.errors import RaydetectError
from raydetect.report import json_default

# --------------------------------------------------------------------------------------------
# Splits


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per key: the same pair lands on the same side in every run and attack."""
    import hashlib

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


# --------------------------------------------------------------------------------------------
# Metrics


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, scores))


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of adversarial inputs flagged when the threshold lets ``fpr`` of clean ones through."""
    clean, adv = scores[y == 0], scores[y == 1]
    if len(clean) == 0 or len(adv) == 0:
        return float("nan")
    thr = threshold_for_fpr(clean, fpr)
    return float((adv > thr).mean())


def threshold_for_fpr(clean_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t with mean(clean > t) <= target_fpr (flag when score > t)."""
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if len(s) == 0:
        raise RaydetectError("no clean validation images to choose a threshold on")
    k = int(np.floor(target_fpr * len(s)))  # how many clean scores may exceed the threshold
    return float(s[len(s) - 1 - k]) if k < len(s) else float(s[0])


def accuracy(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float(((scores > threshold).astype(int) == y).mean())


def bootstrap_ci(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, metric: Any, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``metric(y, scores)`` resampling whole pairs with replacement."""
    unique, inverse = np.unique(pairs, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(len(unique), size=len(unique))
        idx = np.concatenate([rows_of[i] for i in pick])
        v = metric(y[idx], scores[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Evaluation:
    """Detection quality on held-out pairs. Rates are fractions in [0, 1]."""

    n_test_pairs: int
    n_test_rows: int
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1fpr: float
    tpr_at_5fpr: float
    threshold: float
    accuracy: float  # at the chosen threshold
    accuracy_ci: tuple[float, float]
    accuracy_at_half: float  # at score > 0.5, the paper's "accuracy"
    fpr: float  # measured on held-out clean images at the chosen threshold
    tpr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    y: np.ndarray, scores: np.ndarray, pairs: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0
) -> Evaluation:
    clean, adv = scores[y == 0], scores[y == 1]
    return Evaluation(
        n_test_pairs=len(np.unique(pairs)),
        n_test_rows=len(y),
        auc=roc_auc(y, scores),
        auc_ci=bootstrap_ci(y, scores, pairs, roc_auc, n_boot, seed),
        tpr_at_1fpr=tpr_at_fpr(y, scores, 0.01),
        tpr_at_5fpr=tpr_at_fpr(y, scores, 0.05),
        threshold=threshold,
        accuracy=accuracy(y, scores, threshold),
        accuracy_ci=bootstrap_ci(y, scores, pairs, lambda a, b: accuracy(a, b, threshold), n_boot, seed),
        accuracy_at_half=accuracy(y, scores, 0.5),
        fpr=float((clean > threshold).mean()) if len(clean) else float("nan"),
        tpr=float((adv > threshold).mean()) if len(adv) else float("nan"),
    )


# --------------------------------------------------------------------------------------------
# Detector models in formats that load without executing code
#
# lr: scaler and coefficients as JSON; rf: every tree's arrays in an .npz (allow_pickle=False);
# xgboost: the booster's own JSON. Each predicts P(adversarial) for descriptor rows (N, D).

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lr": {"C": 1.0, "max_iter": 5000},
    "rf": {"n_estimators": 300, "min_samples_leaf": 1, "max_features": "sqrt"},
    "xgboost": {"num_boost_round": 300, "max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
}
MODEL_FILES = {"lr": "model_lr.json", "rf": "model_rf.npz", "xgboost": "model_xgboost.json"}


class LinearModel:
    """Standardise, then logistic regression."""

    kind = "lr"

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> None:
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, float(intercept)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str) -> None:
        data = {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept}
        with open(path, "w") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path: str) -> LinearModel:
        with open(path) as f:
            d = json.load(f)
        return cls(np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["coef"]), d["intercept"])


class ForestModel:
    """A random forest as flat node arrays; predicts like sklearn (float32 inputs, <= goes left)."""

    kind = "rf"

    def __init__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        value: np.ndarray,
        roots: np.ndarray,
        depth: int,
    ) -> None:
        self.left, self.right, self.feature, self.threshold = left, right, feature, threshold
        self.value, self.roots, self.depth = value, roots, int(depth)

    @classmethod
    def from_sklearn(cls, forest: Any) -> ForestModel:
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

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        x = np.asarray(X, np.float32).astype(np.float64)  # sklearn trees compare float32 inputs
        n = len(x)
        node = np.repeat(self.roots[:, None], n, axis=1)  # (trees, N)
        rows = np.broadcast_to(np.arange(n), node.shape)
        for _ in range(self.depth):
            leaf = self.left[node] == -1
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        return self.value[node].mean(0)

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                left=self.left,
                right=self.right,
                feature=self.feature,
                threshold=self.threshold,
                value=self.value,
                roots=self.roots,
                depth=np.asarray(self.depth),
            )

    @classmethod
    def load(cls, path: str) -> ForestModel:
        with np.load(path, allow_pickle=False) as d:
            return cls(d["left"], d["right"], d["feature"], d["threshold"], d["value"], d["roots"], int(d["depth"]))


class BoosterModel:
    """An XGBoost booster, stored in XGBoost's own JSON format."""

    kind = "xgboost"

    def __init__(self, booster: Any) -> None:
        self.booster = booster

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(np.asarray(X, np.float32)), np.float64)

    def save(self, path: str) -> None:
        self.booster.save_model(path)

    @classmethod
    def load(cls, path: str) -> BoosterModel:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(path)
        return cls(booster)


SafeModel = LinearModel | ForestModel | BoosterModel
MODEL_CLASSES: dict[str, type] = {"lr": LinearModel, "rf": ForestModel, "xgboost": BoosterModel}


def fit_model(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    device: str = "cpu",
) -> SafeModel:
    """Fit one detector and return it in its safe form. Runs anywhere: locally or in a Ray Train worker."""
    merged = {**DEFAULT_PARAMS[kind], **(params or {})}
    if len(np.unique(y)) < 2:
        raise RaydetectError("the training split holds only one class; add more images or pairs")
    if kind == "lr":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        lr = LogisticRegression(random_state=seed, **merged).fit(scaler.transform(X), y)
        return LinearModel(scaler.mean_, scaler.scale_, lr.coef_[0], float(lr.intercept_[0]))
    if kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return ForestModel.from_sklearn(RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **merged).fit(X, y))
    if kind == "xgboost":
        import xgboost as xgb

        rounds = int(merged.pop("num_boost_round"))
        booster_params = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "seed": seed,
            "nthread": n_jobs,
            "tree_method": "hist",
            "device": device,
            **merged,
        }
        return BoosterModel(xgb.train(booster_params, xgb.DMatrix(X, label=y), num_boost_round=rounds))
    raise RaydetectError(f"unknown detector kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Fitting through Ray Train
#
# XGBoost runs under XGBoostTrainer (distributed when num_workers > 1, on GPU when the cluster
# has one). Ray has no sklearn trainer, so LR and RF fit inside a one-worker DataParallelTrainer.
# Either way the worker writes the model in its safe form as a checkpoint, which is all that
# travels back.


@dataclass(frozen=True)
class FitJob:
    """One detector to fit: its kind, data and hyper-parameters."""

    kind: str
    X: np.ndarray
    y: np.ndarray
    params: dict[str, Any] | None = None
    seed: int = 0


def _shard_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    import ray.train

    X, y = [], []
    for b in ray.train.get_dataset_shard(name).iter_batches(batch_format="pyarrow", batch_size=65536):
        feats = b.column("features").combine_chunks()
        X.append(np.asarray(feats.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(b), -1))
        y.append(np.asarray(b.column("y").to_numpy(), np.int64))
    return np.concatenate(X), np.concatenate(y)


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit every job of this run, save each in its safe form, report one checkpoint."""
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for i, job in enumerate(config["jobs"]):
            X, y = _shard_arrays(f"job{i}")
            model = fit_model(job["kind"], X, y, job["params"], job["seed"], config["n_jobs"], config["device"])
            os.makedirs(os.path.join(tmp, f"job{i}"))
            model.save(os.path.join(tmp, f"job{i}", MODEL_FILES[job["kind"]]))
            rows[f"job{i}_rows"] = len(y)
        ray.train.report(rows, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _to_dataset(X: np.ndarray, y: np.ndarray) -> Any:
    import pyarrow as pa
    import ray.data

    X = np.ascontiguousarray(X, np.float32)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), X.shape[1])
    return ray.data.from_arrow(pa.table({"features": feats, "y": np.asarray(y, np.int64)}))


def fit_many_on_ray(jobs: list[FitJob], storage: str | None = None, num_workers: int = 1) -> list[SafeModel]:
    """Fit detectors through Ray Train: XGBoost jobs under one XGBoostTrainer run (distributed over
    ``num_workers``, on GPU when the cluster has one), LR and RF jobs in one DataParallelTrainer
    worker (Ray has no sklearn trainer). One run per trainer keeps the worker start-up cost (~10 s)
    from repeating per model. Returns models in the order of ``jobs``."""
    import tempfile

    import ray
    from ray.data import DataContext
    from ray.train import RunConfig, ScalingConfig

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)) - 1)
    out: list[SafeModel | None] = [None] * len(jobs)
    groups = {
        "xgboost": [i for i, j in enumerate(jobs) if j.kind == "xgboost"],
        "sklearn": [i for i, j in enumerate(jobs) if j.kind != "xgboost"],
    }
    ctx = DataContext.get_current()
    for group, idx in groups.items():
        if not idx:
            continue
        use_gpu = group == "xgboost" and gpus >= 1
        workers = num_workers if group == "xgboost" else 1
        n_jobs = max(1, cpus // workers)
        config = {
            "jobs": [{"kind": jobs[i].kind, "params": jobs[i].params or {}, "seed": jobs[i].seed} for i in idx],
            "n_jobs": n_jobs,
            "device": "cuda" if use_gpu else "cpu",
        }
        bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # kilobytes: nothing to watch
        try:
            datasets = {f"job{k}": _to_dataset(jobs[i].X, jobs[i].y) for k, i in enumerate(idx)}
        finally:
            ctx.enable_progress_bars = bars
        scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": n_jobs})
        with tempfile.TemporaryDirectory() as tmp:
            # Ray Train parses storage as a URI: a relative local path must become absolute.
            path = storage if storage and "://" in storage else os.path.abspath(storage or tmp)
            # A fresh name per fit: under a reused name Ray Train restores the last run's
            # checkpoint state, and a re-run with the same --out must never pick up old models.
            run = RunConfig(name=f"raydetect-{group}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", storage_path=path)
            if group == "xgboost":
                from ray.train.xgboost import XGBoostTrainer

                trainer: Any = XGBoostTrainer(
                    _train_loop, train_loop_config=config, scaling_config=scaling, run_config=run, datasets=datasets
                )
            else:
                try:
                    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
                except ImportError:  # Ray Train v1
                    from ray.train.data_parallel_trainer import DataParallelTrainer  # type: ignore[no-redef]
                trainer = DataParallelTrainer(
                    _train_loop, train_loop_config=config, scaling_config=scaling, run_config=run, datasets=datasets
                )
            result = trainer.fit()
            if result.checkpoint is None:
                raise RaydetectError(f"Ray Train finished without {group} models: {result.error}")
            with result.checkpoint.as_directory() as d:
                for k, i in enumerate(idx):
                    out[i] = MODEL_CLASSES[jobs[i].kind].load(os.path.join(d, f"job{k}", MODEL_FILES[jobs[i].kind]))
    return [m for m in out if m is not None]


def fit_on_ray(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    storage: str | None = None,
    num_workers: int = 1,
) -> SafeModel:
    """Fit one detector through Ray Train (see :func:`fit_many_on_ray`)."""
    return fit_many_on_ray([FitJob(kind, X, y, params, seed)], storage, num_workers)[0]


# --------------------------------------------------------------------------------------------
# Fit on the training side, threshold on validation clean images, evaluate on the test side


@dataclass
class FitResult:
    model: SafeModel
    threshold: float
    evaluation: Evaluation
    train_rows: int
    val_rows: int


def fit_with_threshold(
    X: np.ndarray, y: np.ndarray, pairs: np.ndarray, cfg: DetectorConfig, use_ray: bool = False, storage: str | None = None
) -> tuple[SafeModel, float, int, int]:
    """Fit on training pairs minus a validation share; choose the threshold on validation clean rows."""
    fit_mask, val_mask = pair_split(pairs, cfg.val_fraction, cfg.seed + 1)
    if use_ray:
        model = fit_on_ray(cfg.kind, X[fit_mask], y[fit_mask], cfg.params, cfg.seed, storage)
    else:
        model = fit_model(cfg.kind, X[fit_mask], y[fit_mask], cfg.params, cfg.seed)
    threshold = threshold_for_fpr(model.predict_proba(X[val_mask & (y == 0)]), cfg.target_fpr)
    return model, threshold, int(fit_mask.sum()), int(val_mask.sum())


def fit_and_evaluate(
    X: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray,
    cfg: DetectorConfig,
    n_boot: int = 1000,
    use_ray: bool = False,
    storage: str | None = None,
) -> FitResult:
    """Split pairs into train/test, fit with a clean-validated threshold, evaluate on test."""
    train, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
    model, thr, n_fit, n_val = fit_with_threshold(X[train], y[train], pairs[train], cfg, use_ray, storage)
    scores = model.predict_proba(X[test])
    return FitResult(model, thr, evaluate(y[test], scores, pairs[test], thr, n_boot, cfg.seed), n_fit, n_val)


# --------------------------------------------------------------------------------------------
# Feature data as written by the feature job


@dataclass
class FeatureSet:
    """Descriptor rows with status ok. Clean rows with an empty ``attack`` are shared by every
    attack (corrected protocol); the paper protocol's clean rows name the attack of their twin."""

    X: np.ndarray  # (N, D) float32
    kind: np.ndarray  # (N,) "clean" | "adversarial"
    pair: np.ndarray  # (N,) pair id (the clean image's id)
    attack: np.ndarray  # (N,) attack name, "" for shared clean rows
    mode: np.ndarray
    eps: np.ndarray

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
            return np.asarray(table.column(name).to_pylist(), dtype=object if table.schema.field(name).type == "string" else None)

        return cls(
            X, arr("kind"), arr("pair_id"), arr("attack"), arr("mode"), np.asarray(table.column("eps").to_pylist(), np.float64)
        )

    @classmethod
    def load(cls, uri: str) -> FeatureSet:
        from raydetect.data import read_output

        table = read_output(uri)
        if table is None:
            raise RaydetectError(f"no feature output under {uri}; run the feature job first")
        return cls.from_table(table)

    @property
    def attacks(self) -> list[str]:
        return sorted({a for a, k in zip(self.attack, self.kind, strict=True) if k == "adversarial"})

    def for_attacks(self, attacks: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, pairs) of the given attacks' adversarial rows and their clean twins.

        Only pairs with a successful adversarial image take part, so classes stay paired and balanced.
        """
        adv = (self.kind == "adversarial") & np.isin(self.attack, attacks)
        pairs = set(self.pair[adv])
        clean = (self.kind == "clean") & np.isin(self.pair, list(pairs)) & (np.isin(self.attack, attacks) | (self.attack == ""))
        idx = np.flatnonzero(adv | clean)
        # Paper protocol: a clean image appears once per attack; keep those rows distinct per pair.
        y = (self.kind[idx] == "adversarial").astype(np.int64)
        return self.X[idx], y, self.pair[idx].astype(str)


# --------------------------------------------------------------------------------------------
# Detector bundles

BUNDLE_VERSION = 1
CHECKSUMS = "SHA256SUMS"


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Detector:
    """A fitted detector with everything needed to use it on new images, and its measured quality.

    ``Detector.load(path)`` verifies checksums and refuses altered bundles; ``score(images)`` runs
    the classifier, the explainer and the descriptor it was trained with and returns
    P(adversarial) per image; ``flag(images)`` applies the bundle's threshold.
    """

    model: SafeModel
    threshold: float
    target_fpr: float
    model_config: dict[str, Any]
    attribution: dict[str, Any]
    features: dict[str, Any]
    feature_names: list[str]
    trained_on: list[str]
    metrics: dict[str, Any]
    params: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.model.kind

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> str:
        out = os.fspath(path)
        os.makedirs(out, exist_ok=True)
        model_file = MODEL_FILES[self.kind]
        self.model.save(os.path.join(out, model_file))
        manifest = {
            "format": "raydetect-detector",
            "version": BUNDLE_VERSION,
            "kind": self.kind,
            "model_file": model_file,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "model": self.model_config,
            "attribution": self.attribution,
            "features": self.features,
            "feature_names": self.feature_names,
            "trained_on": self.trained_on,
            "params": self.params,
            "metrics": self.metrics,
        }
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, default=json_default)
        with open(os.path.join(out, CHECKSUMS), "w") as f:
            for name in ("manifest.json", model_file):
                f.write(f"{_sha256(os.path.join(out, name))}  {name}\n")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Detector:
        """Load a bundle from a directory, or from s3://, gs://... (fetched, then verified the same way)."""
        base = os.fspath(path)
        if "://" in base:
            return cls._load_remote(base)
        sums_path = os.path.join(base, CHECKSUMS)
        if not os.path.isdir(base):
            raise RaydetectError(f"detector bundle not found: {base}")
        if not os.path.isfile(sums_path):
            raise RaydetectError(f"{base} is not a raydetect detector bundle (no {CHECKSUMS})")
        expected: dict[str, str] = {}
        with open(sums_path) as f:
            for line in f:
                digest, _, name = line.strip().partition("  ")
                if digest and name:
                    expected[name] = digest
        if "manifest.json" not in expected:
            raise RaydetectError(f"{sums_path} does not cover manifest.json; the bundle is incomplete")
        for name, digest in expected.items():
            file = os.path.join(base, name)
            if os.path.basename(name) != name or not os.path.isfile(file):
                raise RaydetectError(f"bundle file {name} is missing from {base}")
            if _sha256(file) != digest:
                raise RaydetectError(f"bundle file {name} does not match its checksum: the bundle was altered or damaged")
        with open(os.path.join(base, "manifest.json")) as f:
            m = json.load(f)
        if m.get("format") != "raydetect-detector" or m.get("version") != BUNDLE_VERSION:
            raise RaydetectError(f"{base}: unsupported bundle format {m.get('format')!r} version {m.get('version')!r}")
        if m["kind"] not in MODEL_CLASSES or m["model_file"] != MODEL_FILES[m["kind"]] or m["model_file"] not in expected:
            raise RaydetectError(f"{base}: manifest names an unknown or unverified model file")
        model = MODEL_CLASSES[m["kind"]].load(os.path.join(base, m["model_file"]))
        return cls(
            model=model,
            threshold=float(m["threshold"]),
            target_fpr=float(m["target_fpr"]),
            model_config=m["model"],
            attribution=m["attribution"],
            features=m["features"],
            feature_names=list(m["feature_names"]),
            trained_on=list(m["trained_on"]),
            metrics=m.get("metrics", {}),
            params=m.get("params", {}),
        )

    @classmethod
    def _load_remote(cls, uri: str) -> Detector:
        import tempfile

        from raydetect.data import open_filesystem

        fs, root = open_filesystem(uri)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with fs.open_input_stream(f"{root}/{CHECKSUMS}") as f:
                    sums = f.read().decode()
                names = [line.split("  ", 1)[1] for line in sums.splitlines() if "  " in line]
                for name in [CHECKSUMS, *names]:
                    if os.path.basename(name) != name:
                        raise RaydetectError(f"bundle {uri} names a file outside itself: {name}")
                    with fs.open_input_stream(f"{root}/{name}") as f, open(os.path.join(tmp, name), "wb") as g:
                        g.write(f.read())
            except OSError as exc:
                raise RaydetectError(f"cannot fetch detector bundle {uri}: {exc}") from exc
            return cls.load(tmp)

    # -- compatibility -----------------------------------------------------------------------
    def check_compatible(
        self, model_name: str | None = None, attribution: dict[str, Any] | None = None, features: dict[str, Any] | None = None
    ) -> None:
        """Refuse a run whose model or feature configuration differs from the bundle's."""
        if model_name is not None and model_name != self.model_config.get("name"):
            raise RaydetectError(f"the detector was trained on model {self.model_config.get('name')}, not {model_name}")
        for label, mine, theirs in (("attribution", self.attribution, attribution), ("feature", self.features, features)):
            if theirs is None:
                continue
            diff = {k for k in set(mine) | set(theirs) if _norm(mine.get(k)) != _norm(theirs.get(k))}
            if diff:
                raise RaydetectError(
                    f"{label} config differs from the detector's on {', '.join(sorted(diff))}; "
                    "a detector only reads the descriptors it was trained on"
                )

    # -- scoring -----------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise RaydetectError(f"expected descriptors of length {len(self.feature_names)}; got shape {X.shape}")
        return self.model.predict_proba(X)

    def configs(self) -> tuple[Any, Any, Any]:
        from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, from_dict

        return (
            from_dict(ModelConfig, self.model_config),
            from_dict(AttributionConfig, self.attribution),
            from_dict(FeatureConfig, self.features),
        )

    def score(self, images: Any, model: Any = None, batch_size: int = 16, device: str | None = None) -> np.ndarray:
        """P(adversarial) per image. ``images``: a (N, C, H, W) array/tensor in [0,1] already sized
        for the model, or a list of image file paths (decoded and preprocessed like the pipeline)."""
        import torch

        from raydetect.attribution import Explainer
        from raydetect.data import decode_image
        from raydetect.features import describe
        from raydetect.models import load_model

        mcfg, acfg, fcfg = self.configs()
        if device:
            from dataclasses import replace

            mcfg = replace(mcfg, device=device)
        model = model or self._cached_model(mcfg, load_model)
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
            arrays = []
            for p in images:
                with open(p, "rb") as f:
                    arrays.append(decode_image(f.read(), model.info.preprocess))
            images = np.stack(arrays)
        x = torch.as_tensor(np.asarray(images, np.float32))
        if x.ndim != 4 or x.shape[1] != model.channels:
            raise RaydetectError(f"expected images (N, {model.channels}, H, W) in [0,1]; got shape {tuple(x.shape)}")
        explainer = Explainer(model, acfg)
        feats = [describe(explainer(x[i : i + batch_size]), fcfg) for i in range(0, len(x), batch_size)]
        return self.predict_proba(np.concatenate(feats))

    def flag(self, images: Any, **kwargs: Any) -> np.ndarray:
        """True where an image scores above the bundle's threshold."""
        return self.score(images, **kwargs) > self.threshold

    def _cached_model(self, mcfg: Any, loader: Any) -> Any:
        cached = getattr(self, "_model_cache", None)
        if cached is None or cached[0] != mcfg:
            cached = (mcfg, loader(mcfg))
            object.__setattr__(self, "_model_cache", cached)
        return cached[1]


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------------------------
# Training job: per-attack detection (Table 2), transfer matrix, and the bundle users audit with


def attack_table(table: Any) -> list[dict[str, Any]]:
    """Table 1 rows from feature (or attack) output: success over correctly classified images."""
    rows: dict[str, dict[str, Any]] = {}
    for r in table.select(
        [c for c in ("kind", "attack", "method", "mode", "eps", "steps", "status", "success") if c in table.column_names]
    ).to_pylist():
        if r["kind"] != "adversarial":
            continue
        row = rows.setdefault(
            r["attack"],
            {
                "attack": r["attack"],
                "method": r["method"],
                "mode": r["mode"],
                "eps": r["eps"],
                "steps": r.get("steps", 0),
                "n_correct": 0,
                "n_success": 0,
            },
        )
        row["n_correct"] += 1
        row["n_success"] += int(bool(r["success"]))
    out = sorted(
        rows.values(),
        key=lambda r: (
            r["eps"],
            r["method"],
            ["untargeted", "random", "second"].index(r["mode"]) if r["mode"] in ("untargeted", "random", "second") else 9,
        ),
    )
    for r in out:
        r["success_rate"] = r["n_success"] / r["n_correct"] if r["n_correct"] else float("nan")
    return out


@dataclass
class TrainingReport:
    attack_rows: list[dict[str, Any]]
    detection_rows: list[dict[str, Any]]
    transfer: dict[str, dict[str, dict[str, float]]]  # detector -> train attack -> test attack -> AUC
    bundle: str | None
    bundle_metrics: dict[str, Any]


# Fewest successful pairs an attack needs for a detector (and table row) of its own: an AUC
# over one or two held-out pairs is noise.
MIN_PAIRS = 10


def run_training(
    features_uri: str,
    out: str,
    kinds: tuple[str, ...] = ("lr",),
    cfg: DetectorConfig | None = None,
    attacks: list[str] | None = None,
    bundle_kind: str | None = None,
    use_ray: bool = True,
    n_boot: int = 1000,
    transfer: bool = True,
    progress: Any = None,
    min_pairs: int = MIN_PAIRS,
) -> TrainingReport:
    """Fit every detector kind per attack, evaluate on held-out pairs, and save one bundle.

    The bundle (kind ``bundle_kind``, default the first of ``kinds``) is trained on all selected
    attacks together, as an auditor needs one detector for whatever attack comes. Attacks with
    fewer than ``min_pairs`` successful pairs still feed the bundle, but get no detector and
    no row of their own: an AUC over one or two test pairs is noise.
    """
    from raydetect.data import read_output
    from raydetect.features import feature_names
    from raydetect.pipeline import job_config

    cfg = cfg or DetectorConfig()
    say = progress or (lambda msg: None)
    table = read_output(features_uri)
    if table is None:
        raise RaydetectError(f"no feature output under {features_uri}; run the feature job first")
    job = job_config(features_uri) or {}
    fs = FeatureSet.from_table(table)
    chosen = attacks or fs.attacks
    unknown = set(chosen) - set(fs.attacks)
    if unknown:
        raise RaydetectError(
            f"no successful adversarial rows for {', '.join(sorted(unknown))}; present: {', '.join(fs.attacks) or 'none'}"
        )
    if not chosen:
        raise RaydetectError("the features hold no successful adversarial images to learn from")
    storage = os.path.join(out, ".ray_train") if use_ray and "://" not in out else None

    # Plan every fit first (per attack and kind, plus the bundle), then fit them in one go.
    bkind = bundle_kind or kinds[0]
    # (X, y, pairs) per attack and for all of them, selected once: the fits, the transfer
    # matrix and the bundle's evaluation all read the same rows.
    by_attack = {a: fs.for_attacks([a]) for a in chosen}
    all_rows = fs.for_attacks(chosen)
    n_pairs = {a: len(set(by_attack[a][2])) for a in chosen}
    evaluable = [a for a in chosen if n_pairs[a] >= min_pairs]
    for a in chosen:
        if a not in evaluable:
            say(f"{a}: only {n_pairs[a]} successful pairs (< {min_pairs}); no detector of its own")
    plans = [(kind, a, *by_attack[a]) for kind in kinds for a in evaluable]
    plans.append((bkind, "*", *all_rows))  # "*": the bundle, trained on every attack
    jobs, splits = [], []
    for kind, _, X, y, pairs in plans:
        train, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
        fit_mask, val_mask = pair_split(pairs[train], cfg.val_fraction, cfg.seed + 1)
        fit_idx, val_idx = np.flatnonzero(train)[fit_mask], np.flatnonzero(train)[val_mask]
        splits.append((fit_idx, val_idx, test))
        jobs.append(FitJob(kind, X[fit_idx], y[fit_idx], cfg.params, cfg.seed))
    say(f"fitting {len(jobs)} detectors ({', '.join(kinds)}) on {len(chosen)} attack(s){' through Ray Train' if use_ray else ''}")
    models = fit_many_on_ray(jobs, storage) if use_ray else [fit_model(j.kind, j.X, j.y, j.params, j.seed) for j in jobs]

    detection_rows: list[dict[str, Any]] = []
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    fitted: dict[tuple[str, str], tuple[SafeModel, float]] = {}
    for (kind, a, X, y, pairs), model, (fit_idx, val_idx, test) in zip(plans, models, splits, strict=True):
        thr = threshold_for_fpr(model.predict_proba(X[val_idx][y[val_idx] == 0]), cfg.target_fpr)
        fitted[(kind, a)] = (model, thr)
        if a != "*":
            ev = evaluate(y[test], model.predict_proba(X[test]), pairs[test], thr, n_boot, cfg.seed)
            detection_rows.append({"attack": a, "detector": kind, "train_rows": len(fit_idx), **ev.to_dict()})
    if transfer and len(evaluable) > 1:
        for kind in kinds:
            matrix[kind] = {}
            for a in evaluable:
                model = fitted[(kind, a)][0]
                matrix[kind][a] = {}
                for b in evaluable:
                    X, y, pairs = by_attack[b]
                    _, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
                    matrix[kind][a][b] = roc_auc(y[test], model.predict_proba(X[test]))

    model, thr = fitted[(bkind, "*")]
    X, y, pairs = all_rows
    _, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
    per_attack = {}
    for a in evaluable:
        Xa, ya, pa = by_attack[a]
        _, ta = pair_split(pa, cfg.test_fraction, cfg.seed)
        per_attack[a] = evaluate(ya[ta], model.predict_proba(Xa[ta]), pa[ta], thr, n_boot, cfg.seed).to_dict()
    overall = evaluate(y[test], model.predict_proba(X[test]), pairs[test], thr, n_boot, cfg.seed).to_dict()
    metrics = {"overall": overall, "per_attack": per_attack}
    fcfg = job.get("features", {})
    from raydetect.config import FeatureConfig, from_dict

    names = feature_names(from_dict(FeatureConfig, fcfg)) if fcfg else [f"f{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise RaydetectError(f"feature output has {X.shape[1]} columns but its config names {len(names)}")
    detector = Detector(
        model=model,
        threshold=thr,
        target_fpr=cfg.target_fpr,
        model_config=job.get("model", {}),
        attribution=job.get("attribution", {}),
        features=fcfg,
        feature_names=names,
        trained_on=list(chosen),
        metrics=metrics,
        params={**DEFAULT_PARAMS[bkind], **cfg.params},
    )
    bundle = detector.save(os.path.join(out, "detector"))
    return TrainingReport(attack_table(table), detection_rows, matrix, bundle, metrics)
