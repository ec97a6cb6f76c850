"""Frozen configuration dataclasses, validated once at the boundary (CLI or API entry point).

Every stage takes one of these; ``validate()`` raises :class:`RaydetectError` with a message
that names the bad option, so nothing downstream re-checks user input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from raydetect import registry
from raydetect.errors import RaydetectError

AttackMode = Literal["untargeted", "random", "second"]
Baseline = Literal["black", "blur", "noise", "train", "pair"]
Integration = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
DescriptorName = Literal[
    "signed_quantiles",
    "abs_quantiles",
    "channel_quantiles",
    "stats",
    "concentration",
    "logits",
    "baseline_logits",
]
DetectorKind = Literal["lr", "rf", "xgboost"]
CalibrationMethod = Literal["crossfit", "split"]
VIEW_KINDS = ("blur", "median", "jpeg", "bits")
# Attack methods, explainers and input kinds are the registry's (raydetect/registry.py).
ATTACK_METHODS: tuple[str, ...] = tuple(registry.ATTACKS)
EXPLAINERS: tuple[str, ...] = tuple(registry.EXPLAINERS)
VIEW_EXPLAINERS: tuple[str, ...] = tuple(n for n, s in registry.EXPLAINERS.items() if s.views)
ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)
BASELINES: tuple[str, ...] = get_args(Baseline)
INTEGRATIONS: tuple[str, ...] = get_args(Integration)
DESCRIPTORS: tuple[str, ...] = get_args(DescriptorName)
DETECTORS: tuple[str, ...] = get_args(DetectorKind)
CALIBRATIONS: tuple[str, ...] = get_args(CalibrationMethod)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RaydetectError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RaydetectError(f"{name} must be {bound}; got {value!r}")


def parse_eps(text: str) -> float:
    """Parse an epsilon written as a float (``0.1``) or a fraction of 255 (``4/255``)."""
    text = text.strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise RaydetectError(f"cannot read eps {text!r}: write it as 0.03 or 8/255") from exc


def format_eps(eps: float) -> str:
    """Show eps as k/255 when it is one, since that is how the literature writes it."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to load and where.

    ``weights`` is a local file (state dict); ``random_weights`` builds the architecture with
    random initialisation, for plumbing tests only. ``device`` is ``auto``, ``cpu`` or ``cuda[:N]``:
    where the job runs the model, never part of a bundle (a bundle's model loads as ``auto``).
    """

    name: str = "efficientnet_lite0"
    weights: str | None = None
    random_weights: bool = False
    device: str = "auto"

    def validate(self, ray: bool = False) -> ModelConfig:
        """Checks that need no model code; ``models.registry.checked`` adds the name check. ``ray``: the
        model runs in Ray actors, which see only the GPUs Ray gave them, renumbered from 0."""
        if not self.name:
            raise RaydetectError("a model name is needed")
        if self.weights is not None and self.random_weights:
            raise RaydetectError("give either --weights or --random-weights, not both")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise RaydetectError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        if ray and self.device.startswith("cuda:") and int(self.device[5:]) > 0:
            raise RaydetectError(
                f"device {self.device!r}: under Ray each actor sees only the GPU Ray reserved for it, as cuda:0; "
                "give --device cuda (Ray picks the GPU; CUDA_VISIBLE_DEVICES on the nodes limits which)"
            )
        return self


@dataclass(frozen=True)
class AttackConfig:
    """One attack setting.

    ``bim`` is Kurakin et al.'s iterative method: x_{i+1} = clip_{x,eps}(x_i + alpha*sign(grad)).
    ``paper_bim`` is what the paper's code really ran: every "iteration" restarts from the clean
    image, so the result is one eps-sized signed-gradient step. ``alpha`` defaults to
    2.5 * eps / steps, enough to reach the eps-ball's surface from any start.

    Strength: ``stop_margin`` stops each image at the first iterate whose 8-bit image is
    adversarial with a logit margin above it (0: the first success, a minimal, low-confidence
    adversarial); ``deepfool`` finds minimal perturbations directly (``overshoot``,
    ``candidates`` classes considered per step).

    Attacks that know the detector: ``squeeze_eot`` (BIM on the classification loss of the image
    and of every view the detector computes, ``eot`` random draws per step: needs the detector's
    configuration only) and ``adaptive`` (PGD on a margin loss plus ``lam`` times the detector's
    logit, through the whole differentiable score: needs its weights). ``restarts`` random starts
    (the best iterate is kept), ``lam_search`` doublings/halvings of ``lam`` per image across
    restarts, ``smooth`` > 0 computes gradients with ReLUs replaced by softplus(smooth * x) so
    the explanation's second-order terms are not zero.
    """

    method: str = registry.DEFAULT_ATTACK
    mode: AttackMode = "untargeted"
    eps: float = 4 / 255
    alpha: float | None = None
    steps: int = 10
    seed: int = 0
    stop_margin: float | None = None
    overshoot: float = 0.02
    candidates: int = 4
    restarts: int = 1
    eot: int = 1
    lam: float = 1.0
    lam_search: int = 0
    smooth: float = 0.0
    source_model: str | None = None  # craft on this model instead, then transfer (a black-box attacker)
    # What the dataset's own pipeline does to a planted image after the attack: "jpeg:Q" (saved as JPEG at
    # quality Q) or "resize:S" (downscaled by S in (0, 1), then back). The attack does not see it; success
    # is judged again on the processed image, which is what an auditor receives.
    post: str | None = None

    @property
    def spec(self) -> registry.AttackSpec:
        return registry.attack(self.method)

    @property
    def step_size(self) -> float:
        if self.spec.one_step:
            return self.eps
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    @property
    def effective_steps(self) -> int:
        return 1 if self.spec.one_step else self.steps

    @property
    def adaptive(self) -> bool:
        """Whether the attack knows the detector (its configuration or its weights)."""
        return self.spec.knows_detector

    @property
    def max_passes(self) -> int | None:
        """The most gradient passes per image it may spend (None: depends on the detector attacked)."""
        return self.spec.cost(self)

    @property
    def name(self) -> str:
        """Short, stable label used in tables and Parquet rows, e.g. ``bim-untargeted-4/255``."""
        base = f"{self.method}-{self.mode}-{format_eps(self.eps)}"
        if self.stop_margin is not None:
            base += "-stop" if self.stop_margin == 0 else f"-k{self.stop_margin:g}"
        if self.spec.name_suffix is not None:
            base += self.spec.name_suffix(self)
        if self.source_model:
            base += f"-from-{self.source_model}"
        if self.post:
            base += "-" + self.post.replace(":", "")
        return base

    @property
    def post_step(self) -> tuple[str, float] | None:
        """(kind, parameter) of ``post``; None when unset, or when ``post`` is not a valid step (validate says why)."""
        if not self.post:
            return None
        kind, _, param = self.post.partition(":")
        try:
            value = float(param)
        except ValueError:
            return None
        ok = (kind == "jpeg" and 1 <= value <= 100 and value.is_integer()) or (kind == "resize" and 0 < value < 1)
        return (kind, value) if ok else None

    def validate(self) -> AttackConfig:
        check_choice("attack method", self.method, tuple(registry.ATTACKS))
        check_choice("attack mode", self.mode, ATTACK_MODES)
        _positive("eps", self.eps)
        if self.eps > 1:
            raise RaydetectError(f"eps is an L-inf bound on [0,1] pixels and must be <= 1; got {self.eps}")
        if self.alpha is not None:
            _positive("alpha", self.alpha)
        if self.steps < 1:
            raise RaydetectError(f"steps must be >= 1; got {self.steps}")
        if self.stop_margin is not None:
            _positive("stop margin", self.stop_margin, allow_zero=True)
            if self.spec.one_step or self.spec.stops_itself:
                raise RaydetectError(f"--stop-margin applies to iterative attacks (bim, pgd, ...), not {self.method}")
        for name, value in (("restarts", self.restarts), ("EOT samples", self.eot), ("candidates", self.candidates)):
            if value < 1:
                raise RaydetectError(f"{name} must be >= 1; got {value}")
        _positive("lambda", self.lam, allow_zero=True)
        _positive("overshoot", self.overshoot, allow_zero=True)
        _positive("smoothing", self.smooth, allow_zero=True)
        if self.lam_search < 0:
            raise RaydetectError(f"lambda search steps must be >= 0; got {self.lam_search}")
        if self.post and self.post_step is None:
            raise RaydetectError(f"post-processing is jpeg:Q (Q 1-100) or resize:S (0 < S < 1), e.g. jpeg:90; got {self.post!r}")
        if self.source_model and self.adaptive:
            raise RaydetectError("a transfer attack is crafted on another model without the detector; not with " + self.method)
        return self


@dataclass(frozen=True)
class AttributionConfig:
    """How each prediction is explained.

    ``explainer``: ``ig`` (input Integrated Gradients), ``layer_ig`` (IG at ``layer``),
    ``gradient_shap`` (expected gradients over ``baseline`` draws), ``ig_smoothgrad``
    (IG under a noise tunnel), ``saliency`` (plain gradient x input; one pass).
    ``baseline``: ``black``, ``blur`` (Gaussian blur of the input, sigma ``blur_sigma`` pixels),
    ``noise`` (uniform noise), ``train`` (clean training images, gradient_shap only) or ``pair``
    (the image's clean/adversarial twin: the paper's flawed protocol, replication only).
    The target is always the model's own predicted class, as an auditor has no label.
    """

    # Defaults are the study's best row per unit of compute (STUDY.md): a blurred baseline
    # makes IG explain what the fine, high-frequency detail contributes, which is where an
    # L-inf perturbation lives; 4 Gauss-Legendre steps separate as well as 32 there.
    explainer: str = registry.DEFAULT_EXPLAINER
    n_steps: int = 4
    integration: Integration = "gausslegendre"
    baseline: Baseline = "blur"
    blur_sigma: float = 2.0
    layer: str | None = None
    internal_batch_size: int | None = None
    samples: int = 8
    noise_std: float = 0.1
    seed: int = 0
    # Hardening: more views of the image, each explained against (IG from the view to the image),
    # as "kind:parameter" (blur:4, median:3, jpeg:60, bits:4); and per-image random view strength:
    # every view's parameter scaled by exp(U[-jitter, jitter]), U drawn from a keyed hash of the
    # image's pixels and the auditor's secret (RAYDETECT_SECRET), so an attacker cannot know it.
    # Defaults: the hardening study's chosen design (STUDY.md, `views-secret-wide`): against attacks
    # the detector never trained on it lets far fewer through than the blur alone, at 2.7x the passes (audit_passes).
    views: tuple[str, ...] = ("jpeg:60", "median:3")
    jitter: float = 0.5

    @property
    def passes_per_image(self) -> int:
        """Gradient passes one explanation costs (excluding the prediction itself), over every view."""
        return registry.EXPLAINERS[self.explainer].passes(self) * (1 + len(self.views))

    @property
    def audit_passes(self) -> int:
        """Passes one scored image costs: the explanation's gradient passes, plus a forward pass of the
        image and of each view (their logits are descriptors)."""
        return self.passes_per_image + 2 + len(self.views)

    def validate(self) -> AttributionConfig:
        check_choice("explainer", self.explainer, EXPLAINERS)
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("integration method", self.integration, INTEGRATIONS)
        if self.n_steps < 1:
            raise RaydetectError(f"IG steps must be >= 1; got {self.n_steps}")
        if self.samples < 1:
            raise RaydetectError(f"samples must be >= 1; got {self.samples}")
        _positive("blur sigma", self.blur_sigma)
        _positive("noise std", self.noise_std, allow_zero=True)
        spec = registry.EXPLAINERS[self.explainer]
        if spec.layer and not self.layer:
            raise RaydetectError(f"explainer {self.explainer} needs --layer (early, middle, late or a module path)")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise RaydetectError("internal batch size must be >= 1")
        if self.baseline == "train" and not spec.references:
            with_refs = ", ".join(n for n, e in registry.EXPLAINERS.items() if e.references)
            raise RaydetectError(f"baseline 'train' draws from clean images and only fits {with_refs}")
        for v in self.views:
            kind, _, param = v.partition(":")
            try:
                value = float(param)
            except ValueError:
                value = -1.0
            if kind not in VIEW_KINDS or value <= 0:
                raise RaydetectError(f"a view is kind:parameter with kind one of {', '.join(VIEW_KINDS)}, e.g. blur:4; got {v!r}")
        if len(set(self.views)) != len(self.views):
            raise RaydetectError("views must not repeat")
        if self.views and self.explainer not in VIEW_EXPLAINERS:
            raise RaydetectError(
                f"extra views need the {' or '.join(VIEW_EXPLAINERS)} explainer; give {self.explainer} views=() (--view none)"
            )
        _positive("jitter", self.jitter, allow_zero=True)
        return self


@dataclass(frozen=True)
class FeatureConfig:
    """How an attribution map becomes a fixed-length vector.

    Quantile descriptors resample the sorted attribution values (the paper's descriptor) to
    ``quantiles`` points, so the length does not depend on the image size.
    """

    # Every map descriptor plus the model's logits on the image and on its baseline: the
    # study's best set (the logits are free, the map adds what they miss; see STUDY.md).
    descriptors: tuple[DescriptorName, ...] = DESCRIPTORS  # type: ignore[assignment]
    quantiles: int = 64
    # The field's reference detectors (registry.PEERS) whose features join the vector; with
    # ``explanation=False`` a detector reads only theirs (no explanation, no IG passes).
    peers: tuple[str, ...] = ()
    explanation: bool = True
    # Layers LID and Mahalanobis read (the model's aliases or module paths; "logits": the output).
    peer_layers: tuple[str, ...] = ("early", "middle", "late", "logits")
    squeezers: tuple[str, ...] = ("bits:5", "median:2", "nlm:11-3-4")  # Xu et al.'s ImageNet set
    lid_k: int = 20  # Ma et al.'s neighbours
    maha_noise: float = 0.0014  # Lee et al.'s input pre-processing step (in [0,1] pixels)
    # The noise peer: Gaussian draws per image and their standard deviation (in [0,1] pixels; 0.02
    # is about 5/255, a minimal adversarial's distance to the boundary at the budgets audited).
    noise_draws: int = 8
    noise_sigma: float = 0.02

    @property
    def peer_passes(self) -> int:
        """Passes through the model the peers add per scored image (forward, or forward and backward)."""
        return sum(registry.PEERS[p].passes(self) for p in self.peers)

    def audit_passes(self, attribution: AttributionConfig) -> int:
        """Passes one scored image costs: the explanation's (else one forward pass) and the peers'."""
        return (attribution.audit_passes if self.explanation else 1) + self.peer_passes

    @property
    def needs_references(self) -> bool:
        """Whether a peer estimates its statistics from clean reference images."""
        return any(registry.PEERS[p].references for p in self.peers)

    def validate(self) -> FeatureConfig:
        for p in self.peers:
            check_choice("peer detector", p, tuple(registry.PEERS))
        if len(set(self.peers)) != len(self.peers):
            raise RaydetectError("peers must not repeat")
        if not self.explanation and not self.peers:
            raise RaydetectError("a detector without the explanation needs at least one --peer")
        if self.needs_references and not self.peer_layers:
            raise RaydetectError("LID and Mahalanobis need at least one --peer-layer")
        for sq in self.squeezers:
            registry.squeezer(sq)
        if self.lid_k < 2:
            raise RaydetectError(f"LID's k must be >= 2; got {self.lid_k}")
        _positive("Mahalanobis noise", self.maha_noise, allow_zero=True)
        if self.noise_draws < 2:
            raise RaydetectError(f"the noise peer needs at least 2 draws; got {self.noise_draws}")
        if not 0 < self.noise_sigma <= 0.5:
            raise RaydetectError(f"noise sigma must be in (0, 0.5]; got {self.noise_sigma}")
        if not self.explanation:
            return self
        if not self.descriptors:
            raise RaydetectError("at least one descriptor is needed")
        for d in self.descriptors:
            check_choice("descriptor", d, DESCRIPTORS)
        if len(set(self.descriptors)) != len(self.descriptors):
            raise RaydetectError("descriptors must not repeat")
        if not 2 <= self.quantiles <= 4096:
            raise RaydetectError(f"quantiles must be between 2 and 4096; got {self.quantiles}")
        return self


@dataclass(frozen=True)
class DetectorConfig:
    """Which detector to fit and how to pick its threshold."""

    kind: DetectorKind = "lr"
    target_fpr: float = 0.05
    # Share of the non-test images whose clean rows choose the threshold (never fitted). The
    # threshold's FPR on new images varies like a Beta(~target*n, n) draw, so n matters: 0.4
    # gives about as many calibration rows as test rows (0.2 left 58 of 411 images and a
    # 5% target came out 6-11% held out).
    val_fraction: float = 0.4
    test_fraction: float = 0.3
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    # How the bundle's threshold is chosen: "crossfit" fits the bundle on the fit *and* validation
    # images and scores every one of their clean rows out-of-fold (5 folds, pair-grouped); "split"
    # fits on the fit images and scores the validation images' clean rows. crossfit calibrates on
    # about 2.5x the rows and trains on more. In the hardening study, split thresholds on few rows
    # landed at 0-1% FPR for a 5% target (views-secret, confirmation half: early-stopped BIM evaded
    # 73% with split, 32% with crossfit).
    calibration: CalibrationMethod = "crossfit"

    def validate(self) -> DetectorConfig:
        check_choice("detector", self.kind, DETECTORS)
        check_choice("calibration", self.calibration, CALIBRATIONS)
        if not 0 < self.target_fpr < 1:
            raise RaydetectError(f"target FPR must be in (0, 1); got {self.target_fpr}")
        for name, frac in (("validation fraction", self.val_fraction), ("test fraction", self.test_fraction)):
            if not 0 < frac < 1:
                raise RaydetectError(f"{name} must be in (0, 1); got {frac}")
        return self


@dataclass(frozen=True)
class AdversarialRounds:
    """Detector adversarial training (``train --adversarial-rounds``): each round attacks the training
    images with the white-box adaptive attack against the current detector, explains the adversarials
    that fool the model as the audit would, adds them to the training rows and refits. ``eps`` None:
    the budget most of the features' attacks used. On digits two 50-step rounds cut what a fresh
    100-step adaptive attack got past the detector from 40% to 12% with a secret (STUDY.md)."""

    rounds: int = 0
    steps: int = 50
    eps: float | None = None
    restarts: int = 1

    def validate(self) -> AdversarialRounds:
        if self.rounds < 0:
            raise RaydetectError(f"adversarial rounds must be >= 0; got {self.rounds}")
        if self.steps < 1 or self.restarts < 1:
            raise RaydetectError(f"round steps and restarts must be >= 1; got {self.steps} and {self.restarts}")
        if self.eps is not None and not 0 < self.eps <= 1:
            raise RaydetectError(f"round eps must be in (0, 1]; got {self.eps}")
        return self


@dataclass(frozen=True)
class ResourceConfig:
    """How a Ray job uses the cluster. ``None`` means: pick from what the cluster has
    (batch size: 16 images on CPU, 64 on GPU). ``pass_memory_mb``: the memory one gradient pass of
    the explanation may take; its chunk of inputs is sized to it (None: a default per device, see
    ``models.runtime.pass_memory_budget``)."""

    batch_size: int | None = None
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    pass_memory_mb: float | None = None

    def validate(self) -> ResourceConfig:
        if self.batch_size is not None and self.batch_size < 1:
            raise RaydetectError(f"batch size must be >= 1; got {self.batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise RaydetectError(f"actors must be >= 1; got {self.num_actors}")
        _positive("GPUs per actor", self.gpus_per_actor, allow_zero=True)
        if self.gpus_per_actor > 1:  # an actor's model runs on one device; a second GPU would sit reserved and idle
            raise RaydetectError(f"GPUs per actor must be at most 1 (the model runs on one GPU); got {self.gpus_per_actor:g}")
        if self.cpus_per_actor is not None:
            _positive("CPUs per actor", self.cpus_per_actor)
        if self.pass_memory_mb is not None:
            _positive("pass memory (MB)", self.pass_memory_mb)
        return self


SOURCE_KINDS = registry.SOURCE_KINDS


@dataclass(frozen=True)
class Source:
    """Where inputs come from. ``uri`` is a local path or any pyarrow filesystem URI (s3://, gs://)."""

    uri: str
    kind: str = "auto"
    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"
    limit: int | None = None
    offset: int = 0

    def validate(self) -> Source:
        check_choice("source kind", self.kind, SOURCE_KINDS)
        if self.limit is not None and self.limit < 1:
            raise RaydetectError(f"limit must be >= 1; got {self.limit}")
        if self.offset < 0:
            raise RaydetectError(f"offset must be >= 0; got {self.offset}")
        return self


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays, and tuples."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output, ignoring unknown keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
