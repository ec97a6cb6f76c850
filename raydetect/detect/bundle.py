"""Detector bundles: a fitted head plus everything needed to use it on new images.

A bundle is a folder (local, or on s3:// / gs://: the same code reads and verifies both) holding
``manifest.json`` (threshold and its calibration, the model, attribution and feature
configuration, feature names, measured metrics), the head in a format that loads without
executing code, the GradientShap reference images if the explainer draws on them, ``SHA256SUMS``
over all of these and, when signed, ``SIGNATURE`` (Ed25519 over ``SHA256SUMS``; see
``detect.signing``). Loading with trusted keys refuses unsigned, wrongly signed or altered
bundles; without them it verifies checksums and warns, once, that nothing proves who made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raydetect import registry
from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, from_dict, json_default
from raydetect.detect import signing
from raydetect.detect.heads import HEADS, Head, LinearHead
from raydetect.detect.score import AttackLogit, Scorer
from raydetect.errors import RaydetectError
from raydetect.explain.baselines import View, views
from raydetect.explain.views import PUBLIC_KEY, secret
from raydetect.images import decode_image
from raydetect.models import ImageClassifier, checked, load_model
from raydetect.store import exists, join, open_filesystem, read_bytes, write_bytes

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1
CHECKSUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
REFERENCES = "references.npy"  # uint8 (R, C, H, W): GradientShap's 'train' baseline draws
SURROGATE = "surrogate_lr.json"
_warned: set[str] = set()  # bundles already warned about in this process (the CLI loads twice)

# The detector that ships inside the package (scripts/make_default_detector.sh makes it): public, so
# anyone can attack it white-box; audits that matter train their own and keep it private.
DEFAULT_BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "detector")
DEFAULT_NOTE = (
    "using the shipped default detector (efficientnet_lite0; public: anyone can attack it white-box; for audits that "
    "matter, train your own with RAYDETECT_SECRET set and keep it private)"
)


def default_bundle() -> str:
    """The location of the shipped default bundle."""
    if not os.path.isfile(os.path.join(DEFAULT_BUNDLE, MANIFEST)):
        raise RaydetectError(f"the shipped default detector is missing from {DEFAULT_BUNDLE}; reinstall, or give --detector")
    return DEFAULT_BUNDLE


def is_default(bundle: str) -> bool:
    return os.path.abspath(bundle) == DEFAULT_BUNDLE


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Detector:
    """A fitted detector with its configuration and measured quality.

    ``Detector.load(path, trusted_keys=[...])`` verifies the signature and checksums and refuses
    unsigned or altered bundles; ``score(images)`` runs the classifier, the explainer and the
    descriptor it was trained with and returns P(adversarial) per image; ``flag(images)`` applies
    the bundle's threshold, whose expected false-positive rate and 95% range are in ``calibration``.
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
    calibration: dict[str, Any] = field(default_factory=dict)  # see metrics.Calibration.to_dict
    references: np.ndarray | None = None  # (R, C, H, W) in [0,1]: GradientShap's 'train' baseline, the peers' statistics
    provenance: str = ""  # set by load: who signed it, as far as was checked
    # For heads without gradients: an LR fitted to the same features, which a white-box attacker
    # differentiates instead (BPDA); the detector's own head and threshold still judge its iterates.
    # Shipped in the bundle because the attacker is assumed to have everything the auditor has.
    surrogate: Head | None = None
    # The auditor's key for the views' keyed strengths (never saved; kept out of repr). None: the
    # RAYDETECT_SECRET of whichever process scores. Jobs set it in the driver (load_for_audit), so
    # actors on other nodes, which do not see the driver's environment, draw with the same key.
    views_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The model it was trained with (name, weights), never where that ran: the job that uses the
        # bundle decides the device. Old manifests that say "cpu" or "cuda" load as "auto" too.
        self.model_config = {k: v for k, v in self.model_config.items() if k != "device"}

    @property
    def kind(self) -> str:
        return self.head.kind

    def reads(self) -> str:
        """What the head reads, for reports: the explanation and/or the peers (``registry.PEERS``)."""
        _, acfg, fcfg = self.configs()
        explained = f"`{acfg.explainer}` attributions (baseline `{acfg.baseline}`, {acfg.n_steps} steps)"
        parts = [explained] if fcfg.explanation else []
        parts += [f"{registry.PEERS[p].label} ({registry.PEERS[p].paper})" for p in fcfg.peers]
        return " + ".join(parts)

    def audit_passes(self) -> int:
        """Passes one audited image costs with this detector."""
        _, acfg, fcfg = self.configs()
        return fcfg.audit_passes(acfg)

    def views(self) -> list[View]:
        """The transformed views of an image this detector classifies (what squeeze_eot attacks): the explanation's
        and the peers' (feature squeezing's squeezers)."""
        _, acfg, fcfg = self.configs()
        peer_views = [v for p in fcfg.peers for v in registry.PEERS[p].load().views(fcfg)]
        return (views(acfg) if fcfg.explanation else []) + peer_views

    @property
    def label(self) -> str:
        """A short name for comparison tables: ig, squeeze, lid, mahalanobis (class-agnostic), ig+lid..."""
        _, acfg, fcfg = self.configs()
        names = [acfg.explainer] if fcfg.explanation else []
        names += [registry.PEERS[p].label for p in fcfg.peers]
        return "+".join(names)

    # -- persistence -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": "raydetect-detector", "version": BUNDLE_VERSION, "kind": self.kind, "model_file": self.head.file,
            "threshold": self.threshold, "target_fpr": self.target_fpr, "model": self.model_config,
            "attribution": self.attribution, "features": self.features, "feature_names": self.feature_names,
            "trained_on": self.trained_on, "params": self.params, "metrics": self.metrics,
            "calibration": self.calibration, "references_file": REFERENCES if self.references is not None else None,
            "surrogate_file": SURROGATE if self.surrogate is not None else None,
        }  # fmt: skip

    def save(self, path: str | os.PathLike[str], signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None) -> str:
        """Write the bundle to a folder or object-storage prefix; returns its location.

        ``signing_key`` (a key or a PEM file from ``raydetect keygen``) signs ``SHA256SUMS``, which
        covers every file written here.
        """
        out = os.fspath(path)
        key = signing.load_private_key(signing_key) if isinstance(signing_key, (str, os.PathLike)) else signing_key
        files = {
            MANIFEST: json.dumps(self.manifest(), indent=2, default=json_default).encode(),
            self.head.file: self.head.to_bytes(),
        }
        if self.references is not None:
            buf = io.BytesIO()
            np.save(buf, np.rint(np.clip(self.references, 0, 1) * 255).astype(np.uint8), allow_pickle=False)
            files[REFERENCES] = buf.getvalue()
        if self.surrogate is not None:
            files[SURROGATE] = self.surrogate.to_bytes()
        for name, data in files.items():
            write_bytes(join(out, name), data)
        sums = "".join(f"{_sha256(d)}  {n}\n" for n, d in files.items()).encode()
        write_bytes(join(out, CHECKSUMS), sums)
        if key is not None:
            write_bytes(join(out, signing.SIGNATURE), signing.sign(sums, key))
        else:
            _remove(join(out, signing.SIGNATURE))  # a stale signature from an earlier save would not verify
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], trusted_keys: Sequence[signing.PublicKeyLike] | None = None) -> Detector:
        """Load a bundle from a folder or s3://, gs://...: the same checks wherever it lives.

        ``trusted_keys`` (public keys, PEM/base64 bytes or key files; default: the files named by
        ``RAYDETECT_TRUSTED_KEYS``): when there are any, the bundle must carry a signature by one of
        them over its ``SHA256SUMS``, or it is refused. Every file is checked against ``SHA256SUMS``.
        Without trusted keys an unsigned bundle loads with a one-line warning (once per bundle).
        """
        det, warning = cls._load(path, trusted_keys)
        _warn_once(os.fspath(path), warning)
        return det

    @classmethod
    def default(cls) -> Detector:
        """The detector shipped with raydetect (efficientnet_lite0, the default design; see its manifest's
        ``metrics["held_back"]`` for its quality on images it never trained on)."""
        return cls.load(default_bundle())

    @classmethod
    def _load(cls, path: str | os.PathLike[str], trusted_keys: Sequence[signing.PublicKeyLike] | None) -> tuple[Detector, str]:
        """The verified bundle, and the warning to give about its provenance ("" for none)."""
        base = os.fspath(path)
        if not exists(base):
            raise RaydetectError(f"detector bundle not found: {base}")
        keys = signing.trusted_from_env() if trusted_keys is None else signing.public_keys(trusted_keys)
        try:
            raw_sums = read_bytes(join(base, CHECKSUMS))
            sums = raw_sums.decode()
        except (OSError, RaydetectError, UnicodeDecodeError):
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
        # Files match SHA256SUMS; the signature says whether SHA256SUMS is what its signer wrote.
        provenance, warning = _check_signature(base, raw_sums, keys)
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
        references = None
        if m.get("references_file"):
            if m["references_file"] != REFERENCES or REFERENCES not in files:
                raise RaydetectError(f"{base}: manifest names unknown or unverified reference images")
            references = np.load(io.BytesIO(files[REFERENCES]), allow_pickle=False).astype(np.float32) / 255
        det = cls(
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
            calibration=m.get("calibration", {}),
            references=references,
            provenance=provenance,
            surrogate=surrogate,
        )
        # The shipped bundle is unsigned and public by design: one line says what that means.
        return det, DEFAULT_NOTE if is_default(base) else warning

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
        refs = None if self.references is None else torch.from_numpy(np.asarray(self.references, np.float32))
        return Scorer(model, acfg, fcfg, self.head, refs, self.views_key)

    def attack_logit(self, model: ImageClassifier) -> AttackLogit:
        """The differentiable detector logit a white-box attacker uses (the surrogate for tree heads). An
        attacker reads raydetect: when the audit draws its views with the public key (no
        ``RAYDETECT_SECRET``), the attacker computes every draw too."""
        if self.head.differentiable:
            return AttackLogit(self.scorer(model), self.threshold)
        if self.surrogate is None:
            raise RaydetectError(f"this {self.kind} bundle has no differentiable surrogate; retrain it to attack it")
        return AttackLogit(self.scorer(model), self.threshold, self.surrogate)

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


def load_for_audit(
    bundle: str,
    model: str | None = None,
    weights: str | None = None,
    trusted_keys: Sequence[signing.PublicKeyLike] | None = None,
    device: str = "auto",
) -> tuple[Detector, ModelConfig]:
    """Load and verify a bundle for a job on Ray; the model comes from the bundle (``model`` must agree if
    given), the device from the job (``device``; ``auto``: the job's resource plan decides; one Ray cannot
    give an actor is refused here, before Ray starts).

    Its unsigned-bundle warning comes only once everything else passed, so a bad input is one line.
    The views' key is resolved here, in the driver, and travels with the detector to the actors.
    """
    det, warning = Detector._load(bundle, trusted_keys)
    det.check_compatible(model)
    det.views_key = secret()
    _warn_once(bundle, warning)
    _, acfg, fcfg = det.configs()
    if fcfg.explanation and acfg.jitter > 0 and det.views_key == PUBLIC_KEY and not is_default(bundle):
        _warn_once(f"{bundle}#key", (
            f"detector bundle {bundle} draws its views' strengths per image from a keyed hash, and RAYDETECT_SECRET is "
            "not set: the public key is used, so anyone who reads raydetect can compute every draw (set RAYDETECT_SECRET "
            "where the job's driver runs)"
        ))  # fmt: skip
    mcfg = replace(det.configs()[0], device=device)
    if weights:
        mcfg = replace(mcfg, weights=weights, random_weights=False)
    return det, checked(mcfg).validate(ray=True)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _read_optional(uri: str) -> bytes | None:
    try:
        return read_bytes(uri)
    except (OSError, RaydetectError):
        return None


def _remove(uri: str) -> None:
    fs, p = open_filesystem(uri)
    with contextlib.suppress(OSError):  # nothing to remove
        fs.delete_file(p)


def _warn_once(base: str, message: str) -> None:
    if message and base not in _warned:
        _warned.add(base)
        log.warning(message)


def _check_signature(base: str, sums: bytes, keys: list[Any]) -> tuple[str, str]:
    """Verify ``SIGNATURE`` against the trusted keys, refusing the bundle if that fails; returns
    (provenance, warning to give or "")."""
    raw = _read_optional(join(base, signing.SIGNATURE))
    if keys:
        if raw is None:
            raise RaydetectError(f"{base} is not signed, and trusted keys are set: refusing an unsigned bundle")
        signer = signing.verify(sums, signing.read_signature(raw, base), keys, base)
        return f"signed by trusted key {signer}", ""
    if raw is None:
        return "unsigned", (
            f"detector bundle {base} is unsigned: its checksums catch accidents, not tampering "
            "(sign with `train --sign-key`, require it with `--trust-key`)"
        )
    sig = signing.read_signature(raw, base)
    if not signing.self_consistent(sums, sig):
        raise RaydetectError(f"{base}: the signature does not verify; the bundle's files changed after it was signed")
    return f"signed by key {sig.key_id} (not checked against a trusted key)", (
        f"detector bundle {base} is signed by key {sig.key_id}, but no trusted key was given to check who signed it "
        "(--trust-key or RAYDETECT_TRUSTED_KEYS)"
    )
