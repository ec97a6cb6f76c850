"""Detector bundles: a fitted head plus everything needed to use it on new images.

A bundle is a folder (local, or on s3:// / gs://: the same code reads both) holding
``manifest.json`` (threshold, the model, attribution and feature configuration, feature names,
measured metrics), the head in a format that loads without executing code, and ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, from_dict, json_default
from raydetect.detect.heads import HEADS, Head, LinearHead
from raydetect.detect.score import AttackLogit, Scorer
from raydetect.errors import RaydetectError
from raydetect.explain.baselines import View, views
from raydetect.images import decode_image
from raydetect.models import ImageClassifier, checked, load_model
from raydetect.store import exists, join, read_bytes, write_bytes

BUNDLE_VERSION = 1
CHECKSUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
SURROGATE = "surrogate_lr.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Detector:
    """A fitted detector with its configuration and measured quality.

    ``Detector.load(path)`` verifies checksums and refuses altered bundles; ``score(images)`` runs
    the classifier, the explainer and the descriptor it was trained with and returns
    P(adversarial) per image; ``flag(images)`` applies the bundle's threshold.
    """

    head: Head
    threshold: float
    target_fpr: float
    model_config: dict[str, Any]
    attribution: dict[str, Any]
    features: dict[str, Any]
    feature_names: list[str]
    trained_on: list[str]
    metrics: dict[str, Any]
    params: dict[str, Any]
    # For heads without gradients: an LR fitted to the same features, and its threshold at the same
    # target FPR, which a white-box attacker differentiates instead (BPDA). Shipped in the bundle
    # because the attacker is assumed to have everything the auditor has.
    surrogate: Head | None = None
    surrogate_threshold: float | None = None

    @property
    def kind(self) -> str:
        return self.head.kind

    # -- persistence -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": "raydetect-detector", "version": BUNDLE_VERSION, "kind": self.kind, "model_file": self.head.file,
            "threshold": self.threshold, "target_fpr": self.target_fpr, "model": self.model_config,
            "attribution": self.attribution, "features": self.features, "feature_names": self.feature_names,
            "trained_on": self.trained_on, "params": self.params, "metrics": self.metrics,
            "surrogate_file": SURROGATE if self.surrogate is not None else None,
            "surrogate_threshold": self.surrogate_threshold,
        }  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the bundle to a folder or object-storage prefix; returns its location."""
        out = os.fspath(path)
        files = {
            MANIFEST: json.dumps(self.manifest(), indent=2, default=json_default).encode(),
            self.head.file: self.head.to_bytes(),
        }
        if self.surrogate is not None:
            files[SURROGATE] = self.surrogate.to_bytes()
        for name, data in files.items():
            write_bytes(join(out, name), data)
        write_bytes(join(out, CHECKSUMS), "".join(f"{_sha256(d)}  {n}\n" for n, d in files.items()).encode())
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Detector:
        """Load a bundle from a folder or s3://, gs://...; every file is checked against SHA256SUMS."""
        base = os.fspath(path)
        if not exists(base):
            raise RaydetectError(f"detector bundle not found: {base}")
        try:
            sums = read_bytes(join(base, CHECKSUMS)).decode()
        except (OSError, RaydetectError):
            raise RaydetectError(f"{base} is not a raydetect detector bundle (no {CHECKSUMS})") from None
        expected = {}
        for line in sums.splitlines():
            digest, _, name = line.strip().partition("  ")
            if digest and name:
                expected[name] = digest
        if MANIFEST not in expected:
            raise RaydetectError(f"{join(base, CHECKSUMS)} does not cover {MANIFEST}; the bundle is incomplete")
        files = {}
        for name, digest in expected.items():
            if os.path.basename(name) != name:
                raise RaydetectError(f"bundle {base} names a file outside itself: {name}")
            try:
                files[name] = read_bytes(join(base, name))
            except (OSError, RaydetectError):
                raise RaydetectError(f"bundle file {name} is missing from {base}") from None
            if _sha256(files[name]) != digest:
                raise RaydetectError(f"bundle file {name} does not match its checksum: the bundle was altered or damaged")
        m = json.loads(files[MANIFEST])
        if m.get("format") != "raydetect-detector" or m.get("version") != BUNDLE_VERSION:
            raise RaydetectError(f"{base}: unsupported bundle format {m.get('format')!r} version {m.get('version')!r}")
        surrogate = None
        if m.get("surrogate_file"):
            if m["surrogate_file"] != SURROGATE or SURROGATE not in files:
                raise RaydetectError(f"{base}: manifest names an unverified surrogate file")
            surrogate = LinearHead.from_bytes(files[SURROGATE])
        head_cls = HEADS.get(m.get("kind", ""))
        if head_cls is None or m["model_file"] != head_cls.file or m["model_file"] not in files:
            raise RaydetectError(f"{base}: manifest names an unknown or unverified model file")
        return cls(
            head=head_cls.from_bytes(files[m["model_file"]]),
            threshold=float(m["threshold"]),
            target_fpr=float(m["target_fpr"]),
            model_config=m["model"],
            attribution=m["attribution"],
            features=m["features"],
            feature_names=list(m["feature_names"]),
            trained_on=list(m["trained_on"]),
            metrics=m.get("metrics", {}),
            params=m.get("params", {}),
            surrogate=surrogate,
            surrogate_threshold=m.get("surrogate_threshold"),
        )

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

    def configs(self) -> tuple[ModelConfig, AttributionConfig, FeatureConfig]:
        return (
            from_dict(ModelConfig, self.model_config),
            from_dict(AttributionConfig, self.attribution),
            from_dict(FeatureConfig, self.features),
        )

    # -- scoring -----------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(adversarial) for descriptor rows (N, D)."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise RaydetectError(f"expected descriptors of length {len(self.feature_names)}; got shape {X.shape}")
        return self.head.predict_proba(X)

    def scorer(self, model: ImageClassifier) -> Scorer:
        """The torch score of this detector on ``model`` (which must be the bundle's model)."""
        _, acfg, fcfg = self.configs()
        return Scorer(model, acfg, fcfg, self.head)

    def views(self) -> list[View]:
        """The transformed views of an image this detector classifies (what squeeze_eot attacks)."""
        return views(self.configs()[1])

    def attack_logit(self, model: ImageClassifier) -> AttackLogit:
        """The differentiable detector logit a white-box attacker uses (the surrogate for tree heads)."""
        if self.head.differentiable:
            return AttackLogit(self.scorer(model), self.threshold)
        if self.surrogate is None or self.surrogate_threshold is None:
            raise RaydetectError(f"this {self.kind} bundle has no differentiable surrogate; retrain it to attack it")
        return AttackLogit(self.scorer(model), self.surrogate_threshold, self.surrogate)

    def load_model(self, device: str | None = None) -> ImageClassifier:
        """The bundle's classifier, loaded once per device and kept."""
        mcfg = self.configs()[0]
        mcfg = replace(mcfg, device=device) if device else mcfg
        cached = getattr(self, "_model_cache", None)
        if cached is None or cached[0] != mcfg:
            cached = (mcfg, load_model(mcfg))
            object.__setattr__(self, "_model_cache", cached)
        return cached[1]

    def score(
        self, images: Any, model: ImageClassifier | None = None, batch_size: int = 16, device: str | None = None
    ) -> np.ndarray:
        """P(adversarial) per image. ``images``: a (N, C, H, W) array/tensor in [0,1] already sized
        for the model, or a list of image file paths (decoded and preprocessed like the pipeline)."""
        model = model or self.load_model(device)
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
            images = np.stack([decode_image(read_bytes(os.fspath(p)), model.info.preprocess) for p in images])
        x = torch.as_tensor(np.asarray(images, np.float32))
        if x.ndim != 4 or x.shape[1] != model.channels:
            raise RaydetectError(f"expected images (N, {model.channels}, H, W) in [0,1]; got shape {tuple(x.shape)}")
        scorer = self.scorer(model)
        return np.concatenate([scorer(x[i : i + batch_size]).cpu().numpy() for i in range(0, len(x), batch_size)])

    def flag(self, images: Any, **kwargs: Any) -> np.ndarray:
        """True where an image scores above the bundle's threshold."""
        return self.score(images, **kwargs) > self.threshold


def load_for_audit(bundle: str, model: str | None = None, weights: str | None = None) -> tuple[Detector, ModelConfig]:
    """Load and verify a bundle; the model comes from the bundle (``model`` must agree if given)."""
    det = Detector.load(bundle)
    det.check_compatible(model)
    mcfg = det.configs()[0]
    if weights:
        mcfg = replace(mcfg, weights=weights, random_weights=False)
    return det, checked(mcfg)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
