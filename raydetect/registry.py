"""The registries: every attack, explainer and input reader raydetect knows, one entry each.

Everything else reads these entries: config validation, the CLI's choices and help, the reports'
labels and "knows the detector?" column, the cost accounting, ``attacks.make_attack``,
``Explainer`` and ``stages.read``. Adding an attack is one file under ``attacks/`` plus one
entry in :data:`ATTACKS`. An entry holds metadata and the dotted path of its implementation
(loaded on first use), so this module imports nothing heavy and ``config`` can read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raydetect.errors import RaydetectError


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# -- attacks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackSpec:
    """What the rest of raydetect asks of one attack.

    ``cost(cfg)`` is the most gradient passes per image the attack may spend (the measured
    ``passes`` of each image is at most this; ``None`` where it depends on the detector attacked).
    ``knows`` says what it knows of the detector ("" nothing, "configuration", "white box (weights)");
    ``needs`` what ``make_attack`` must hand it ("views" or "detector"). ``fields`` are the
    ``AttackConfig`` fields it reads beyond method, mode, eps and seed.
    """

    name: str
    impl: str
    summary: str
    label: str  # table label; ``{steps}`` is filled in
    cost: Callable[[Any], int | None]
    one_step: bool = False  # one eps-sized step whatever --steps says
    stops_itself: bool = False  # stops at the first 8-bit success by design: --stop-margin does not apply
    knows: str = ""
    needs: str = ""
    query_only: bool = False  # uses only the model's outputs, no gradients (a black-box attacker)
    fields: tuple[str, ...] = ()
    name_suffix: Callable[[Any], str] | None = None  # extra part of AttackConfig.name

    @property
    def knows_detector(self) -> bool:
        return bool(self.knows)

    @property
    def iterative(self) -> bool:
        return not self.one_step

    def load(self) -> type:
        return _load(self.impl)


def _steps(cfg: Any) -> int:
    return cfg.steps


# The code names attacks through these (``BIM.name``), never by a string of its own.
BIM = AttackSpec(
    "bim",
    "raydetect.attacks.bim:BIM",
    "Kurakin et al.'s iterative signed-gradient method (BIM)",
    "BIM-{steps}",
    _steps,
    fields=("steps", "alpha", "stop_margin"),
)
PGD = AttackSpec(
    "pgd",
    "raydetect.attacks.bim:PGD",
    "BIM from a random start in the eps-ball (Madry et al.)",
    "PGD-{steps}",
    _steps,
    fields=("steps", "alpha", "stop_margin"),
)
FGSM = AttackSpec(
    "fgsm", "raydetect.attacks.fgsm:FGSM", "one signed-gradient step of size eps", "FGSM", lambda c: 1, one_step=True
)
PAPER_BIM = AttackSpec(
    "paper_bim",
    "raydetect.attacks.fgsm:PaperBIM",
    "the paper's code's 'BIM' (one step)",
    "paper's BIM (= 1 step)",
    lambda c: 1,
    one_step=True,
)
DEEPFOOL = AttackSpec(
    "deepfool",
    "raydetect.attacks.deepfool:DeepFool",
    "minimal perturbation, stops once the 8-bit copy fools the model",
    "DeepFool",
    lambda c: c.steps * (1 if c.mode != "untargeted" else c.candidates),
    stops_itself=True,
    fields=("steps", "overshoot", "candidates"),
)
CW_L2 = AttackSpec(
    "cw_l2",
    "raydetect.attacks.cw:CWL2",
    "Carlini-Wagner L2 inside the eps-ball: smallest L2 change that fools the model (--lam: c, --stop-margin: kappa)",
    "CW-L2 ({steps} steps)",
    lambda c: c.steps * (c.lam_search + 1),
    fields=("steps", "alpha", "stop_margin", "lam", "lam_search"),
)
SQUEEZE_EOT = AttackSpec(
    "squeeze_eot",
    "raydetect.attacks.squeeze:SqueezeEOT",
    "knows the detector's configuration: BIM on the image and every view it computes (needs --detector)",
    "BIM on every view (EOT)",
    lambda c: None,
    knows="configuration",
    needs="views",
    fields=("steps", "alpha", "eot"),
)
ADAPTIVE = AttackSpec(
    "adaptive",
    "raydetect.attacks.adaptive:Adaptive",
    "white box: PGD through the model and the whole detector (needs --detector)",
    "adaptive PGD-{steps}",
    lambda c: None,
    knows="white box (weights)",
    needs="detector",
    fields=("steps", "alpha", "stop_margin", "restarts", "eot", "lam", "lam_search", "smooth"),
    name_suffix=lambda c: f"-{c.steps}x{c.restarts}",
)

SQUARE = AttackSpec(
    "square",
    "raydetect.attacks.square:Square",
    "Square Attack: query-only (the model's scores, no gradients), --steps queries, stops at the first success",
    "Square ({steps} queries)",
    lambda c: c.steps,
    stops_itself=True,
    query_only=True,
    fields=("steps",),
)

ATTACKS: dict[str, AttackSpec] = {s.name: s for s in (BIM, PGD, FGSM, PAPER_BIM, DEEPFOOL, CW_L2, SQUARE, SQUEEZE_EOT, ADAPTIVE)}
DEFAULT_ATTACK = BIM.name
PAPER_ATTACK = PAPER_BIM.name  # what the paper's code ran (replication protocol)


def attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise RaydetectError(f"attack method must be one of {', '.join(ATTACKS)}; got {name!r}")
    return ATTACKS[name]


def knows_detector(method: str) -> str:
    """What an attack method (a row's ``method``) knows of the detector; "" for none or an unknown name."""
    spec = ATTACKS.get(method)
    return spec.knows if spec else ""


def attack_help() -> str:
    return "; ".join(f"{s.name}: {s.summary}" for s in ATTACKS.values())


# -- explainers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainerSpec:
    """What the rest of raydetect asks of one attribution method.

    ``passes(cfg)`` is its gradient passes per explained view; ``views``: whether it explains against
    extra views; ``differentiable``: whether it can keep the graph (the adaptive attack needs it);
    ``completeness``: its attributions sum to f(x) - f(baseline), so delta follows from the logits;
    ``layer``: it needs --layer; ``references``: it can draw baselines from clean images (baseline 'train').
    """

    name: str
    impl: str  # a function (Call) -> (attributions, delta | None)
    summary: str
    passes: Callable[[Any], int]
    views: bool = False
    differentiable: bool = False
    completeness: bool = False
    layer: bool = False
    references: bool = False

    def load(self) -> Callable[..., Any]:
        return _load(self.impl)


EXPLAINERS: dict[str, ExplainerSpec] = {
    s.name: s
    for s in (
        ExplainerSpec("ig", "raydetect.explain.methods.ig:integrated_gradients", "input Integrated Gradients",
                      lambda c: c.n_steps, views=True, differentiable=True, completeness=True),
        ExplainerSpec("layer_ig", "raydetect.explain.methods.layer_ig:layer_integrated_gradients", "IG at --layer",
                      lambda c: c.n_steps, layer=True),
        ExplainerSpec("gradient_shap", "raydetect.explain.methods.gradient_shap:gradient_shap",
                      "expected gradients over --samples baseline draws", lambda c: c.samples, references=True),
        ExplainerSpec("ig_smoothgrad", "raydetect.explain.methods.ig_smoothgrad:ig_smoothgrad", "IG under a noise tunnel",
                      lambda c: c.n_steps * c.samples),
        ExplainerSpec("saliency", "raydetect.explain.methods.saliency:saliency", "gradient x input (one pass)", lambda c: 1,
                      views=True, differentiable=True),
    )
}  # fmt: skip
DEFAULT_EXPLAINER = "ig"


def explainer_help() -> str:
    return "; ".join(f"{s.name}: {s.summary}" for s in EXPLAINERS.values())


# -- reference detectors (peers) ------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One of the field's reference detectors, as features a head reads (``detect/peers/``).

    ``passes(cfg)``: passes through the model per scored image (a forward pass, or a forward and backward pass,
    each count one, as in ``AttributionConfig.audit_passes``); ``references``: it estimates statistics from
    clean reference images, drawn like GradientShap's (``stages.references``) and kept in the bundle.
    """

    name: str
    impl: str
    summary: str
    paper: str
    names: Callable[[Any], list[str]]  # feature columns it adds, from the FeatureConfig
    label: str  # in tables (e.g. "mahalanobis (class-agnostic)": the variant is part of its name)
    passes: Callable[[Any], int]
    references: bool = False

    def load(self) -> type:
        return _load(self.impl)


PEERS: dict[str, PeerSpec] = {
    s.name: s
    for s in (
        PeerSpec("squeeze", "raydetect.detect.peers.squeeze:FeatureSqueezing",
                 "feature squeezing: largest L1 change of the softmax under --squeezer (bits, median, nlm)",
                 "Xu, Evans and Qi, NDSS 2018", lambda c: ["squeeze_max_l1"], "squeeze",
                 lambda c: 1 + len(c.squeezers)),
        PeerSpec("noise", "raydetect.detect.peers.noise:NoiseStability",
                 "stability under --noise-draws Gaussian draws of --noise-sigma, keyed like the views: the logit "
                 "margin, its mean and spread under noise, the predicted class's probability, the softmax's L1 change",
                 "Hu et al., NeurIPS 2019; Roth et al., ICML 2019",
                 lambda c: ["noise_margin", "noise_margin_mean", "noise_margin_std", "noise_p_pred", "noise_l1"], "noise",
                 lambda c: 1 + c.noise_draws),
        PeerSpec("lid", "raydetect.detect.peers.lid:LID",
                 "local intrinsic dimensionality of --peer-layer activations against clean references (k = --lid-k)",
                 "Ma et al., ICLR 2018", lambda c: [f"lid_{la}" for la in c.peer_layers], "lid", lambda c: 1,
                 references=True),
        PeerSpec("mahalanobis", "raydetect.detect.peers.mahalanobis:Mahalanobis",
                 "Mahalanobis distance of --peer-layer features to the clean references' Gaussian, after a "
                 "--maha-noise input step (class-agnostic: one Gaussian)",
                 "Lee et al., NeurIPS 2018", lambda c: [f"maha_{la}" for la in c.peer_layers], "mahalanobis (class-agnostic)",
                 lambda c: 2 * len(c.peer_layers),
                 references=True),
    )
}  # fmt: skip


def squeezer(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``bits:N`` (1-7), ``median:K`` (2-7) or ``nlm:SEARCH-PATCH-H`` (odd windows)."""
    kind, _, param = spec.partition(":")
    try:
        values = tuple(int(v) for v in param.split("-"))
    except ValueError:
        values = ()
    ok = {
        "bits": len(values) == 1 and 1 <= values[0] <= 7,
        "median": len(values) == 1 and 2 <= values[0] <= 7,
        "nlm": len(values) == 3 and values[0] % 2 == 1 and values[1] % 2 == 1 and values[1] <= values[0] and values[2] > 0,
    }.get(kind, False)
    if not ok:
        raise RaydetectError(f"a squeezer is bits:N (1-7), median:K (2-7) or nlm:SEARCH-PATCH-H (odd windows); got {spec!r}")
    return kind, values


def peer_help() -> str:
    return "; ".join(f"{s.name}: {s.summary} ({s.paper})" for s in PEERS.values())


# -- input readers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderSpec:
    """One input format: its reader class (``stages/readers/``) owns detection, planning, row
    decoding and its errors. ``per_row_skip``: row ids are known only once a work item is read,
    so resume skips rows, not items."""

    name: str
    impl: str
    summary: str
    per_row_skip: bool = False
    auto: bool = True  # tried by --kind auto (in the order of READERS)

    def load(self) -> type:
        return _load(self.impl)


READERS: dict[str, ReaderSpec] = {
    s.name: s
    for s in (
        ReaderSpec("digits", "raydetect.stages.readers.digits:DigitsReader", "sklearn's 8x8 digits (the input 'digits')"),
        ReaderSpec("parquet", "raydetect.stages.readers.parquet:ParquetReader",
                   "Parquet with encoded image bytes (Hugging Face {bytes, path} cells too)", per_row_skip=True),
        ReaderSpec("webdataset", "raydetect.stages.readers.webdataset:WebDatasetReader", "WebDataset .tar shards",
                   per_row_skip=True),
        ReaderSpec("imagenet", "raydetect.stages.readers.folder:ImageNetReader",
                   "ImageNet folder <wnid>/<file> (labels from the wnid)"),
        ReaderSpec("folder", "raydetect.stages.readers.folder:FolderReader", "any folder of image files (no labels)"),
    )
}  # fmt: skip
SOURCE_KINDS: tuple[str, ...] = ("auto", *READERS)


def reader_help() -> str:
    return "auto (detect), " + "; ".join(f"{s.name}: {s.summary}" for s in READERS.values())


__all__ = [
    "ADAPTIVE",
    "ATTACKS",
    "BIM",
    "CW_L2",
    "DEEPFOOL",
    "DEFAULT_ATTACK",
    "DEFAULT_EXPLAINER",
    "EXPLAINERS",
    "FGSM",
    "PAPER_ATTACK",
    "PAPER_BIM",
    "PEERS",
    "PGD",
    "READERS",
    "SOURCE_KINDS",
    "SQUARE",
    "SQUEEZE_EOT",
    "AttackSpec",
    "ExplainerSpec",
    "PeerSpec",
    "ReaderSpec",
    "attack",
    "attack_help",
    "explainer_help",
    "knows_detector",
    "peer_help",
    "reader_help",
    "squeezer",
]  # fmt: skip
