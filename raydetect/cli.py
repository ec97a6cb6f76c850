"""The ``raydetect`` command line. It parses options, builds validated configs and calls the library.

Library errors (:class:`RaydetectError`) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from raydetect import __version__, registry, store
from raydetect import submit as sub
from raydetect.config import (
    ATTACK_MODES,
    DESCRIPTORS,
    VIEW_EXPLAINERS,
    AdversarialRounds,
    AttributionConfig,
    DetectorConfig,
    FeatureConfig,
    ModelConfig,
    ResourceConfig,
    Source,
    parse_eps,
)
from raydetect.errors import RaydetectError
from raydetect.report import write_report
from raydetect.stages.console import ConsoleFilter, set_verbose
from raydetect.store import check_same_model, exists, is_remote

app = typer.Typer(
    name="raydetect",
    help="Detect adversarial images by their explanations (Integrated Gradients), at cluster scale on Ray.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into a one-line message and exit code; never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RaydetectError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Commands that run Ray in this process: their console gets Ray's chatter filtered unless -v.
RAY_COMMANDS = ("attack", "features", "train", "reproduce", "audit", "evaluate")


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"raydetect {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail, and show Ray's own logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_verbose(verbose)
    if not verbose and ctx.invoked_subcommand in RAY_COMMANDS and not ctx.resilient_parsing:
        ctx.call_on_close(ConsoleFilter().close)
    # Ray Data logs a 7-line progress block every 10 s when stderr is not a terminal (CI, `ray job
    # submit`, nohup); every 30 s is progress enough for hour-long jobs. Read when ray.data is
    # imported, which happens later, inside the command.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "30")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # this invocation's stderr, also when one process runs several commands (tests, notebooks)
    )


# Shared option types -------------------------------------------------------------------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="efficientnet_lite0 (default, embedded weights), digits_cnn, inception_v3 or any torchvision model."
    ),
]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="State-dict file for the model (offline weights for torchvision models).")
]
RandomWeightsOpt = Annotated[
    bool, typer.Option("--random-weights", help="Random weights: plumbing tests only, results are meaningless.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (GPUs where the cluster has them), cpu or cuda: where the job runs the model.")
]
EpsOpt = Annotated[
    list[str] | None, typer.Option("--eps", help="L-inf budget on [0,1] pixels, e.g. 4/255 or 0.1; repeat for several.")
]
StepsOpt = Annotated[int, typer.Option("--steps", help="BIM iterations.")]
ModesOpt = Annotated[
    list[str] | None,
    typer.Option("--mode", help=f"Attack modes ({', '.join(ATTACK_MODES)}); repeat for several. Default: all three."),
]
ExplainerOpt = Annotated[str, typer.Option("--explainer", help=registry.explainer_help() + ".")]
IGStepsOpt = Annotated[
    int, typer.Option("--ig-steps", help="Integrated Gradients steps (gradient passes per explanation, against each view).")
]
BaselineOpt = Annotated[str, typer.Option("--baseline", help="IG baseline: black, blur or noise (train for gradient_shap).")]
BlurOpt = Annotated[float, typer.Option("--blur-sigma", help="Gaussian sigma in pixels of the blur baseline.")]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="For layer_ig: early, middle, late or a module path.")]
QuantilesOpt = Annotated[int, typer.Option("--quantiles", help="Points the sorted attributions are resampled to.")]
DescriptorsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--descriptor",
        help=f"Descriptor parts ({', '.join(DESCRIPTORS)}); repeat for several. Default: the best set of STUDY.md.",
    ),
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per batch (default 16 on CPU, 64 on GPU).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for targets, splits and detectors.")]


def model_config(model: str, weights: Path | None, random_weights: bool, device: str) -> ModelConfig:
    from raydetect.models import checked  # torch: only once a command runs, so --help stays fast

    return checked(
        ModelConfig(name=model, weights=str(weights) if weights else None, random_weights=random_weights, device=device)
    ).validate(ray=True)  # every command runs its model in Ray actors


def attribution_config(
    explainer: str,
    ig_steps: int,
    baseline: str,
    layer: str | None,
    blur_sigma: float = AttributionConfig.blur_sigma,
    views: list[str] | None = None,
    jitter: float = AttributionConfig.jitter,
) -> AttributionConfig:
    return AttributionConfig(
        explainer=explainer,  # type: ignore[arg-type]
        n_steps=ig_steps,
        baseline=baseline,  # type: ignore[arg-type]
        blur_sigma=blur_sigma,
        layer=layer,
        views=_views(views, explainer),
        jitter=jitter,
    ).validate()


def _views(given: list[str] | None, explainer: str) -> tuple[str, ...]:
    """--view as given ('none': no extra view); unset, the default views, which only ig and saliency take."""
    if given is None:
        return AttributionConfig.views if explainer in VIEW_EXPLAINERS else ()
    return () if given == ["none"] else tuple(given)


ViewOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--view",
        help="An extra view of each image, explained against too: blur:SIGMA, median:K, jpeg:QUALITY or bits:N; "
        "repeat for several; 'none' for the IG baseline alone (a third of the gradient passes, and far weaker against "
        "attacks the detector never trained on). Default: jpeg:60 and median:3 with ig and saliency (STUDY.md).",
    ),
]
JitterOpt = Annotated[
    float,
    typer.Option(
        "--jitter",
        help="Per-image random view strength, scaled by exp(U[-j, j]) drawn from a keyed hash of the image and "
        "$RAYDETECT_SECRET (0: fixed views). Make the secret random (e.g. `openssl rand -hex 32`) and set it where the "
        "job's driver runs; audits warn when it is unset.",
    ),
]


PeerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--peer",
        help="A reference detector whose features join the explanation's (with --no-explanation: replace them); repeat "
        "for several. " + registry.peer_help() + ".",
    ),
]
ExplanationOpt = Annotated[
    bool, typer.Option("--explanation/--no-explanation", help="Include the explanation's descriptor (off: peers only).")
]
PeerLayerOpt = Annotated[
    list[str] | None,
    typer.Option("--peer-layer", help="Layer LID and Mahalanobis read (early, middle, late, logits or a module path); repeat. "
                 "Default: all four."),
]  # fmt: skip
SqueezerOpt = Annotated[
    list[str] | None,
    typer.Option("--squeezer", help="Feature squeezing's squeezers: bits:N, median:K, nlm:S-P-H; repeat. "
                 "Default: bits:5, median:2, nlm:11-3-4 (the paper's ImageNet set)."),
]  # fmt: skip
LidKOpt = Annotated[int, typer.Option("--lid-k", help="LID's nearest neighbours among the clean references.")]
MahaNoiseOpt = Annotated[
    float, typer.Option("--maha-noise", help="Mahalanobis' input pre-processing step on [0,1] pixels (0: none).")
]
NoiseDrawsOpt = Annotated[int, typer.Option("--noise-draws", help="The noise peer's Gaussian draws per image.")]
NoiseSigmaOpt = Annotated[float, typer.Option("--noise-sigma", help="The noise peer's standard deviation on [0,1] pixels.")]


def feature_config(
    descriptors: list[str] | None,
    quantiles: int,
    peers: list[str] | None = None,
    explanation: bool = True,
    peer_layers: list[str] | None = None,
    squeezers: list[str] | None = None,
    lid_k: int = FeatureConfig.lid_k,
    maha_noise: float = FeatureConfig.maha_noise,
    noise_draws: int = FeatureConfig.noise_draws,
    noise_sigma: float = FeatureConfig.noise_sigma,
) -> FeatureConfig:
    given = {
        "descriptors": tuple(descriptors or ()), "peers": tuple(peers or ()), "peer_layers": tuple(peer_layers or ()),
        "squeezers": tuple(squeezers or ()),
    }  # fmt: skip
    return FeatureConfig(
        quantiles=quantiles, explanation=explanation, lid_k=lid_k, maha_noise=maha_noise, noise_draws=noise_draws,
        noise_sigma=noise_sigma, **{k: v for k, v in given.items() if v},
    ).validate()  # fmt: skip


CalibrationOpt = Annotated[
    str,
    typer.Option(
        "--calibration",
        help="How the bundle's threshold is chosen. crossfit: the bundle fits on the fit and validation images, every "
        "one of their clean rows scored out-of-fold (more rows to fit and to calibrate on). split: it fits on the fit "
        "images only and the validation images' clean rows choose the threshold.",
    ),
]


def parse_eps_list(values: list[str] | None, default: list[float]) -> list[float]:
    return [parse_eps(v) for v in values] if values else default


# Cluster options ------------------------------------------------------------------------------

AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]
ActorsOpt = Annotated[int | None, typer.Option("--actors", help="Model actors (default: one per GPU, or one per 8 CPUs).")]
GpusOpt = Annotated[float, typer.Option("--gpus-per-actor", help="GPUs per actor; 0 uses GPUs when the cluster has them.")]
CpusOpt = Annotated[
    float | None, typer.Option("--cpus-per-actor", help="CPUs reserved per actor (default leaves one for reads).")
]
KindOpt = Annotated[str, typer.Option("--kind", help="Input kind: " + registry.reader_help() + ".")]
ImageColOpt = Annotated[str, typer.Option("--image-column", help="Parquet column with encoded image bytes.")]
IdColOpt = Annotated[str, typer.Option("--id-column", help="Parquet column with row ids (default: file#row).")]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="Parquet column with class indices, if any.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most this many input files.")]
OffsetOpt = Annotated[int, typer.Option("--offset", help="Skip this many input files first (sorted by path).")]


# Adversarial images made elsewhere (features, train) -------------------------------------------

CleanOpt = Annotated[
    str | None, typer.Option("--clean", help="Clean images beside --adversarial ones: folder or Parquet, local, s3:// or gs://.")
]
AdversarialOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adversarial",
        help="[NAME=]PATH: adversarial images made elsewhere (torchattacks, ART, ...), folder or Parquet; repeat per attack.",
    ),
]
PairingOpt = Annotated[
    str,
    typer.Option(
        "--pairing",
        help="How an adversarial image finds its clean original: path (same relative path, any extension), id (Parquet: "
        "--pair-column = clean --id-column), none (unpaired sets), auto (id for Parquet, else path).",
    ),
]
GroupRegexOpt = Annotated[
    str | None,
    typer.Option(
        "--group-regex",
        help="With --pairing none: images whose ids give the same match (its first group) are near-duplicates, kept on "
        "one side of every split. Default: relative path with attack suffixes (_adv, -pgd, ...) stripped.",
    ),
]
PairColOpt = Annotated[str, typer.Option("--pair-column", help="Parquet column of adversarial rows naming their clean row's id.")]


def external_images(
    clean: str | None, adversarial: list[str] | None, pairing: str, group_regex: str | None, image_column: str = "image",
    id_column: str = "id", pair_column: str = "pair_id", label_column: str = "label",
) -> Any:  # fmt: skip
    """The validated ``ExternalImages`` of --clean/--adversarial, or None when neither is given."""
    from raydetect.stages.external import ExternalImages, parse_adversarial  # Ray: only once a command runs

    if not adversarial and clean is None:
        return None
    if not adversarial or clean is None:
        raise RaydetectError("adversarial images made elsewhere need both --clean PATH and --adversarial [NAME=]PATH")
    spec = ExternalImages(clean, parse_adversarial(adversarial), pairing, group_regex, image_column, id_column, pair_column,
                          label_column).validate()  # fmt: skip
    for uri in (spec.clean, *(u for _, u in spec.adversarial)):
        if not is_remote(uri) and not exists(uri):
            raise RaydetectError(f"input path does not exist: {uri}")
    return spec


def resource_config(
    batch_size: int | None, actors: int | None, gpus_per_actor: float, cpus_per_actor: float | None
) -> ResourceConfig:
    return ResourceConfig(
        batch_size=batch_size, num_actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor
    ).validate()


def source_config(
    uri: str, kind: str, image_column: str, id_column: str, label_column: str, limit: int | None, offset: int = 0
) -> Source:
    src = Source(uri, kind, image_column, id_column, label_column, limit, offset).validate()
    if uri != "digits" and not is_remote(uri) and not exists(uri):
        raise RaydetectError(f"input path does not exist: {uri}")
    return src


MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="Attack method. " + registry.attack_help() + ".",
    ),
]
StopOpt = Annotated[
    float | None,
    typer.Option(
        "--stop-margin", help="Stop each image once its 8-bit image is adversarial by this logit margin (0: first success)."
    ),
]
StrengthsOpt = Annotated[
    str | None,
    typer.Option(
        "--strengths",
        help="What a detector will train on. bim: BIM at --steps in each --mode (the paper's attacks). mix: also BIM "
        "stopped at the first success (targeted) and at logit margin 2 (untargeted): lower-confidence adversarials, "
        "so the detector does not learn 'over-optimised' alone. wide: mix, plus BIM in each --mode at eps 0.1. "
        "Default: wide with plain BIM (the hardening study's choice, STUDY.md), else bim.",
        show_default=False,
    ),
]
RestartsOpt = Annotated[int, typer.Option("--restarts", help="adaptive: random restarts (the best iterate is kept).")]
EotOpt = Annotated[
    int | None,
    typer.Option(
        "--eot",
        help="squeeze_eot/adaptive: samples of the defense's randomness per step. Default: 2 against a detector whose "
        "views' strengths are random (--jitter > 0), else 1. Without RAYDETECT_SECRET the audit draws them with the "
        "public key, and adaptive computes every draw instead (one sample).",
        show_default=False,
    ),
]
LamOpt = Annotated[float, typer.Option("--lam", help="adaptive: weight of the detector's logit in the loss.")]
LamSearchOpt = Annotated[int, typer.Option("--lam-search", help="adaptive: doublings/halvings of --lam per image.")]
SmoothOpt = Annotated[
    float, typer.Option("--smooth", help="adaptive: gradients through softplus(beta x) for ReLUs (0: off); e.g. 10.")
]
PostOpt = Annotated[
    str | None,
    typer.Option(
        "--post",
        help="What the dataset's pipeline does to each adversarial after the attack: jpeg:Q (saved as JPEG at quality "
        "Q) or resize:S (down by S in (0, 1), then back). Success is judged on the processed image.",
    ),
]
SourceModelOpt = Annotated[
    str | None, typer.Option("--source-model", help="Craft on this model instead and transfer (a black-box attacker).")
]


def print_summary(summary: Any) -> None:
    status = ", ".join(f"{k}: {v}" for k, v in sorted(summary.rows_by_status.items()))
    typer.echo(
        f"{summary.job}: {summary.rows_total} rows in {summary.output} ({status}); "
        f"{summary.skipped_done} already done, {summary.duplicate_ids} duplicate ids, {summary.seconds:.0f} s"
    )


@app.command()
@handle_errors
def attack(
    input: Annotated[
        str, typer.Argument(help="Image folder, ImageNet folder, Parquet file/folder, s3:// or gs:// URI, or 'digits'.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory (Parquet parts); re-running resumes.")],
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    device: DeviceOpt = "auto",
    method: MethodOpt = registry.DEFAULT_ATTACK,
    mode: ModesOpt = None,
    eps: EpsOpt = None,
    steps: StepsOpt = 10,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Step size (default 2.5*eps/steps).")] = None,
    stop_margin: StopOpt = None,
    strengths: StrengthsOpt = None,
    detector: Annotated[
        str | None, typer.Option("--detector", "-d", help="Detector bundle that squeeze_eot and adaptive attack.")
    ] = None,
    restarts: RestartsOpt = 1,
    eot: EotOpt = None,
    lam: LamOpt = 1.0,
    lam_search: LamSearchOpt = 0,
    smooth: SmoothOpt = 0.0,
    source_model: SourceModelOpt = None,
    post: PostOpt = None,
    all_images: Annotated[bool, typer.Option("--all-images", help="Also attack images the model misclassifies.")] = False,
    kind: KindOpt = "auto",
    image_column: ImageColOpt = "image",
    id_column: IdColOpt = "id",
    label_column: LabelColOpt = "label",
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
    address: AddressOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Attack every image (three modes, several eps at once) on Ray; write PNGs and outcomes.

    Output rows: one 'clean' row per input (errors included, with their reason) and one
    'adversarial' row per image and attack, with the lossless 8-bit PNG, whether the attack
    still succeeds on it, and the gradient passes it cost.
    """
    from raydetect.attacks.suite import attack_grid, default_eot, mixed_strengths  # Ray and torch: only once a command runs
    from raydetect.detect.bundle import load_for_audit
    from raydetect.stages import runner

    src = source_config(input, kind, image_column, id_column, label_column, limit, offset)
    mcfg = model_config(model, weights, random_weights, device)
    det = load_for_audit(detector, mcfg.name)[0] if detector else None
    eot = default_eot(det.configs()[1].jitter if det else 0.0, eot)
    strength = {"stop_margin": stop_margin, "restarts": restarts, "eot": eot, "lam": lam, "lam_search": lam_search,
                "smooth": smooth, "source_model": source_model, "post": post}  # fmt: skip
    eps_list = parse_eps_list(eps, [4 / 255])
    attacks = attack_grid(method, mode, eps_list, steps, alpha, seed, **strength)
    extras = mixed_strengths(strengths, eps_list, seed, method == registry.BIM.name and stop_margin is None, mode, steps)
    attacks += [dataclasses.replace(a, post=post).validate() for a in extras]  # the pipeline processes every image
    if source_model:
        model_config(source_model, None, False, "auto")
    job = runner.AttackJob(out, mcfg, src, attacks, only_correct=not all_images, detector=det, bundle=detector)
    print_summary(runner.run_job(job, resource_config(batch_size, actors, gpus_per_actor, cpus_per_actor), address))


@app.command()
@handle_errors
def features(
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory (Parquet parts); re-running resumes.")],
    attacks_dir: Annotated[
        str | None,
        typer.Argument(help="Output directory of `raydetect attack` (or give --clean and --adversarial).", metavar="ATTACKS_DIR"),
    ] = None,
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    device: DeviceOpt = "auto",
    protocol: Annotated[
        str, typer.Option("--protocol", help="corrected, or paper (explain each image against its twin).")
    ] = "corrected",
    explainer: ExplainerOpt = AttributionConfig.explainer,
    ig_steps: IGStepsOpt = AttributionConfig.n_steps,
    baseline: BaselineOpt = AttributionConfig.baseline,
    blur_sigma: BlurOpt = AttributionConfig.blur_sigma,
    view: ViewOpt = None,
    jitter: JitterOpt = AttributionConfig.jitter,
    layer: LayerOpt = None,
    quantiles: QuantilesOpt = 64,
    descriptor: DescriptorsOpt = None,
    peer: PeerOpt = None,
    explanation: ExplanationOpt = True,
    peer_layer: PeerLayerOpt = None,
    squeezer: SqueezerOpt = None,
    lid_k: LidKOpt = FeatureConfig.lid_k,
    maha_noise: MahaNoiseOpt = FeatureConfig.maha_noise,
    noise_draws: NoiseDrawsOpt = FeatureConfig.noise_draws,
    noise_sigma: NoiseSigmaOpt = FeatureConfig.noise_sigma,
    maps_fraction: Annotated[
        float, typer.Option("--maps-fraction", help="Share of rows that keep their raw attribution map (for figures).")
    ] = 0.0,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
    address: AddressOpt = None,
    clean: CleanOpt = None,
    adversarial: AdversarialOpt = None,
    pairing: PairingOpt = "auto",
    group_regex: GroupRegexOpt = None,
    image_column: ImageColOpt = "image",
    id_column: IdColOpt = "id",
    pair_column: PairColOpt = "pair_id",
    label_column: LabelColOpt = "label",
) -> None:
    """Explain every clean and adversarial image with Integrated Gradients; write descriptor vectors (and peers').

    Input: the output of `raydetect attack`, or adversarial images made elsewhere with their clean originals
    (--clean DIR --adversarial [NAME=]DIR), paired by relative path or id, or unpaired (--pairing none).
    """
    from raydetect.stages import runner  # Ray and torch: only once a command runs

    spec = external_images(clean, adversarial, pairing, group_regex, image_column, id_column, pair_column, label_column)
    if (spec is None) == (attacks_dir is None):
        raise RaydetectError("give either ATTACKS_DIR (from `raydetect attack`) or --clean and --adversarial, not both")
    if protocol not in ("corrected", "paper"):
        raise RaydetectError(f"protocol must be corrected or paper; got {protocol!r}")
    if not 0 <= maps_fraction <= 1:
        raise RaydetectError("--maps-fraction must be between 0 and 1")
    mcfg = model_config(model, weights, random_weights, device)
    attribution = attribution_config(
        explainer, ig_steps, "pair" if protocol == "paper" else baseline, layer, blur_sigma, view, jitter
    )
    fcfg = feature_config(descriptor, quantiles, peer, explanation, peer_layer, squeezer, lid_k, maha_noise, noise_draws,
                          noise_sigma)  # fmt: skip
    if spec is not None:
        job: runner.Job = runner.ExternalFeatureJob(out, mcfg, spec, attribution, fcfg, maps_fraction)
    else:
        check_same_model(str(attacks_dir), mcfg.name)
        job = runner.FeatureJob(out, mcfg, str(attacks_dir), attribution, fcfg, maps_fraction=maps_fraction)
    print_summary(runner.run_job(job, resource_config(batch_size, actors, gpus_per_actor, cpus_per_actor), address))


@app.command()
@handle_errors
def reproduce(
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="ImageNet-style folder (<wnid>/<file>) or 'digits'. Default: digits for digits_cnn."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for report.md, results.json, features and detector bundles.")
    ] = Path("runs/reproduce"),
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    device: DeviceOpt = "auto",
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol", help="corrected, paper, or both (the paper's setting as a replication row beside the corrected one)."
        ),
    ] = "both",
    eps: EpsOpt = None,
    steps: StepsOpt = 10,
    strengths: StrengthsOpt = None,
    explainer: ExplainerOpt = AttributionConfig.explainer,
    ig_steps: IGStepsOpt = AttributionConfig.n_steps,
    baseline: BaselineOpt = AttributionConfig.baseline,
    blur_sigma: BlurOpt = AttributionConfig.blur_sigma,
    view: ViewOpt = None,
    jitter: JitterOpt = AttributionConfig.jitter,
    layer: LayerOpt = None,
    quantiles: QuantilesOpt = FeatureConfig.quantiles,
    descriptor: DescriptorsOpt = None,
    detector: Annotated[
        list[str] | None,
        typer.Option("--detector", help="lr, rf, xgboost; repeat for several. Default: lr and rf, as the paper."),
    ] = None,
    calibration: CalibrationOpt = DetectorConfig.calibration,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    engine: Annotated[
        str, typer.Option("--engine", help="ray (Ray Data jobs and Ray Train) or local (the same jobs in this process, no Ray).")
    ] = "ray",
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="Also evaluate the corrected bundle on held-out images against attacks it never trained on (PGD, "
            "early-stopped BIM, DeepFool, a transfer attack) and attackers who know it (squeeze_eot, adaptive).",
        ),
    ] = False,
    adaptive_images: Annotated[int, typer.Option("--adaptive-images", help="Held-out images for --adaptive.")] = 32,
    adaptive_steps: Annotated[int, typer.Option("--adaptive-steps", help="Steps of squeeze_eot and adaptive.")] = 100,
    restarts: RestartsOpt = 1,
    eot: EotOpt = None,
    smooth: Annotated[float, typer.Option("--smooth", help="adaptive: softplus beta for ReLUs in its gradients.")] = 10.0,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
    address: AddressOpt = None,
    sign_key: Annotated[
        Path | None, typer.Option("--sign-key", help="Ed25519 private key (from `raydetect keygen`) to sign the bundles with.")
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Run the paper's experiment end to end: attack, explain, fit detectors, write Tables 1 and 2.

    The corrected protocol (iterative BIM at --eps, default 4/255; 8-bit adversarials; per-image baselines; pair-aware
    splits; ROC AUC with intervals) runs beside the paper's own (one eps=0.1 step; each image explained against its
    twin), so the gap between them is visible. Writes a detector bundle per protocol for `raydetect audit`.
    """
    from raydetect.attacks.suite import default_eot, mixed_strengths  # Ray and torch: only once a command runs
    from raydetect.stages.reproduce import Reproduction, Robustness, run_reproduction

    eps_list = parse_eps_list(eps, [4 / 255])
    attribution = attribution_config(explainer, ig_steps, baseline, layer, blur_sigma, view, jitter)
    robustness = Robustness(adaptive_images, adaptive_steps, restarts, default_eot(attribution.jitter, eot), smooth)
    cfg = Reproduction(
        out=str(out), model=model_config(model, weights, random_weights, device), data=data,
        protocols=("paper", "corrected") if protocol == "both" else (protocol,), eps=tuple(eps_list), steps=steps,
        extra_attacks=tuple(mixed_strengths(strengths, eps_list, seed, steps=steps)), attribution=attribution,
        features=feature_config(descriptor, quantiles), detectors=tuple(detector or ["lr", "rf"]),
        calibration=calibration, limit=limit, offset=offset, engine=engine,  # type: ignore[arg-type]
        robustness=robustness if adaptive else None, address=address, seed=seed,
        resources=resource_config(batch_size, actors, gpus_per_actor, cpus_per_actor),
        sign_key=None if sign_key is None else str(sign_key),
    )  # fmt: skip
    path = run_reproduction(cfg)
    typer.echo(f"report: {path}")


def parse_params(values: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, booleans), else strings."""
    import json

    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RaydetectError(f"--param takes key=value; got {item!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@app.command()
@handle_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for report.md, results.json and the detector bundle.")],
    features_dir: Annotated[
        str | None,
        typer.Argument(
            help="Output directory of `raydetect features` (or of the fused job); or give --clean and --adversarial.",
            metavar="FEATURES_DIR",
        ),
    ] = None,
    detector: Annotated[
        list[str] | None, typer.Option("--detector", help="lr, rf, xgboost; repeat to compare. Default: lr.")
    ] = None,
    bundle_detector: Annotated[
        str | None, typer.Option("--bundle-detector", help="Kind saved as the bundle (default: the first --detector).")
    ] = None,
    attack: Annotated[
        list[str] | None, typer.Option("--attack", help="Attack names to train on (default: every attack present).")
    ] = None,
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="False-positive rate the threshold is chosen for, on clean images.")
    ] = 0.05,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of image pairs held out for testing.")] = 0.3,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Share of the other images held out of the split calibration's fit, whose clean rows choose its threshold.",
        ),
    ] = DetectorConfig.val_fraction,
    calibration: CalibrationOpt = DetectorConfig.calibration,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Detector hyper-parameter key=value (e.g. n_estimators=500); repeat.")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% intervals.")] = 1000,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Fit in this process instead of through Ray Train.")] = False,
    workers: Annotated[
        int, typer.Option("--workers", help="Ray Train workers for XGBoost (one model, data split across them; LR/RF use 1).")
    ] = 1,
    sign_key: Annotated[
        Path | None, typer.Option("--sign-key", help="Ed25519 private key (from `raydetect keygen`) to sign the bundle with.")
    ] = None,
    address: AddressOpt = None,
    seed: SeedOpt = 0,
    clean: CleanOpt = None,
    adversarial: AdversarialOpt = None,
    pairing: PairingOpt = "auto",
    group_regex: GroupRegexOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="With --adversarial: the model to explain them with.")] = (
        "efficientnet_lite0"
    ),
    weights: WeightsOpt = None,
    adversarial_rounds: Annotated[
        int,
        typer.Option(
            "--adversarial-rounds",
            help="Detector adversarial training: rounds of attacking the images with the white-box adaptive attack "
            "against the current detector and fitting again on what fooled the model (0: none). Costs about "
            "--round-steps x 30 gradient passes per image and round (x2 with RAYDETECT_SECRET set): GPU work on ImageNet.",
        ),
    ] = 0,
    round_steps: Annotated[int, typer.Option("--round-steps", help="Adaptive attack steps per round.")] = (
        AdversarialRounds.steps
    ),
    round_eps: Annotated[
        str | None, typer.Option("--round-eps", help="Budget of the rounds' attack (default: the one most trained attacks used).")
    ] = None,
    round_restarts: Annotated[int, typer.Option("--round-restarts", help="Restarts of the rounds' attack.")] = 1,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
) -> None:
    """Fit detectors per attack (Table 2, transfer matrix) and save one detector bundle trained on all attacks.

    Splits keep each clean image and its adversarial twin on the same side; the threshold is chosen on the clean
    validation images (all correctly classified ones) for --target-fpr, and the bundle states the FPR range that
    promises. The bundle loads without executing code, is verified by checksum, and with --sign-key is signed.

    With --adversarial-rounds N the detector then trains against the white-box attacker: each round attacks the
    images the features came from (FEATURES_DIR's source) against the current detector, adds what fooled the model
    and fits again (rounds resume under OUT/rounds/). Set RAYDETECT_SECRET as your audits will. Measure the final
    bundle with `raydetect evaluate` on images it never saw: it attacks that bundle afresh.
    """
    from raydetect.stages.train import Training, train_detector  # matplotlib, Ray and torch: once a command runs

    spec = external_images(clean, adversarial, pairing, group_regex)
    req = Training(
        out=str(out), features=None if features_dir is None else str(features_dir), external=spec,
        model=model_config(model, weights, False, "auto") if spec is not None else None,
        kinds=tuple(detector or ["lr"]), bundle_kind=bundle_detector, attacks=tuple(attack) if attack else None,
        detector=DetectorConfig(target_fpr=target_fpr, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                params=parse_params(param), calibration=calibration),  # type: ignore[arg-type]
        rounds=AdversarialRounds(adversarial_rounds, round_steps, parse_eps(round_eps) if round_eps else None,
                                 round_restarts),
        resources=resource_config(batch_size, actors, gpus_per_actor, cpus_per_actor), address=address,
        use_ray=not no_ray, bootstrap=bootstrap, workers=workers, sign_key=None if sign_key is None else str(sign_key),
    )  # fmt: skip
    trained, path = train_detector(req, logging.getLogger("raydetect").info)
    if trained.explained is not None:
        print_summary(trained.explained)
    rep = trained.result
    cal = rep.detector.calibration
    overall = rep.bundle_metrics["overall"]
    signed = f", signed by key {trained.signed_by}" if trained.signed_by else ", unsigned"
    typer.echo(
        f"bundle: {trained.bundle} (held-out ROC AUC {overall['auc']:.3f}, TPR {overall['tpr']:.1%} at FPR {overall['fpr']:.1%}; "
        f"threshold for {cal['target_fpr']:.0%} FPR: expected {cal['expected_fpr']:.1%}, 95% range "
        f"{cal['fpr_range'][0]:.1%}-{cal['fpr_range'][1]:.1%} from {cal['rows']} clean images{signed})"
    )
    typer.echo(f"report: {path}")


@app.command()
@handle_errors
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Private key file to write; the public key goes to OUT.pub.")],
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
) -> None:
    """Make an Ed25519 key pair for signing detector bundles (train --sign-key OUT; audit --trust-key OUT.pub).

    The private key file is readable by its owner only; keep it off the machines that audit. Give the .pub file to
    whoever audits, or list it in the file named by RAYDETECT_TRUSTED_KEYS.
    """
    from raydetect.detect.signing import generate_key  # cryptography: only once a command runs

    private, public, kid = generate_key(out, overwrite=force)
    typer.echo(f"key {kid}: private {private}, public {public}")


@app.command()
@handle_errors
def audit(
    input: Annotated[str, typer.Argument(help="Images to audit: folder tree, Parquet file/folder, s3:// or gs:// URI.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output directory: rows/ (Parquet), rows.csv, report.html (one file), report.md.")
    ],
    detector: Annotated[
        str | None,
        typer.Option(
            "--detector",
            "-d",
            help="Detector bundle (from train or reproduce). Default: the shipped detector for efficientnet_lite0 (public).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Must match the bundle's model if given (the bundle decides).")
    ] = None,
    weights: WeightsOpt = None,
    kind: KindOpt = "auto",
    image_column: ImageColOpt = "image",
    id_column: IdColOpt = "id",
    label_column: LabelColOpt = "label",
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    top: Annotated[
        int, typer.Option("--top", help="How many of the most suspicious images the report shows, with thumbnail and heatmap.")
    ] = 20,
    device: DeviceOpt = "auto",
    trust_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust-key",
            help="Public key file (from keygen) the bundle must be signed by; repeat for several. "
            "Default: the key files named by $RAYDETECT_TRUSTED_KEYS; with neither, an unsigned bundle loads with a warning.",
        ),
    ] = None,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
    address: AddressOpt = None,
) -> None:
    """Score every image of a dataset with a detector bundle; write one row per input and a report.

    With --trust-key (or $RAYDETECT_TRUSTED_KEYS) the bundle must be signed by a trusted key and unchanged since,
    or the audit refuses to start. Unreadable or broken inputs become rows with status=error and the reason; the
    job goes on. Re-running with the same --out resumes where it stopped.
    """
    from raydetect.detect.bundle import default_bundle, load_for_audit  # Ray and torch: only once a command runs
    from raydetect.detect.signing import public_keys
    from raydetect.stages.runner import run_audit

    src = source_config(input, kind, image_column, id_column, label_column, limit, offset)
    detector = detector or default_bundle()
    if model is not None:
        model_config(model, None, False, "auto")
    trusted = public_keys(trust_key) if trust_key else None  # None: $RAYDETECT_TRUSTED_KEYS decides
    load_for_audit(detector, model, str(weights) if weights else None, trusted, device)  # fail fast, before Ray starts
    if top < 0:
        raise RaydetectError("--top must be >= 0")
    resources = resource_config(batch_size, actors, gpus_per_actor, cpus_per_actor)
    s, report = run_audit(src, out, detector, resources, model, str(weights) if weights else None, top, address, trusted,
                          device)  # fmt: skip
    status = ", ".join(f"{k}: {v}" for k, v in sorted(s.rows_by_status.items()))
    typer.echo(f"audit: {s.rows_total} inputs ({status}) in {s.seconds:.0f} s")
    typer.echo(f"report: {report}")


CompareOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--compare",
        help="Another bundle (same model) scoring the same images, e.g. a peer detector; repeat. One table, attack by "
        "attack; attacks that know a detector run against each.",
    ),
]


@app.command()
@handle_errors
def evaluate(
    input: Annotated[str, typer.Argument(help="Labelled images the detector never saw (ImageNet folder, 'digits', ...).")],
    detector: Annotated[str, typer.Option("--detector", "-d", help="Detector bundle to evaluate.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output directory: rows (Parquet), report.md, report.html, results.json.")
    ],
    compare: CompareOpt = None,
    eps: EpsOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="Attack mode: untargeted, random or second.")] = "untargeted",
    adaptive_steps: Annotated[int, typer.Option("--adaptive-steps", help="Steps of squeeze_eot and adaptive.")] = 100,
    restarts: RestartsOpt = 1,
    eot: EotOpt = None,
    smooth: Annotated[float, typer.Option("--smooth", help="adaptive: softplus beta for ReLUs in its gradients.")] = 10.0,
    no_adaptive: Annotated[bool, typer.Option("--no-adaptive", help="Skip the attacks that know the detector.")] = False,
    device: DeviceOpt = "auto",
    kind: KindOpt = "auto",
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    batch_size: BatchOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusOpt = 0.0,
    cpus_per_actor: CpusOpt = None,
    address: AddressOpt = None,
) -> None:
    """Attack images with every strength and with attackers who know the detector; report what gets past it.

    Per attack (BIM-10 and PGD-10, BIM stopped at the first success, DeepFool, a transfer attack from another model,
    squeeze_eot, the white-box adaptive attack): how often it fools the model, ROC AUC and TPR at fixed false-positive
    rates against the clean images, the share of images that fool the model and pass the detector ("evaded"), and
    the attacker's cost.
    """
    from raydetect.attacks.suite import default_eot, robustness_suite  # Ray and torch: only once a command runs
    from raydetect.detect.bundle import load_for_audit
    from raydetect.explain.views import PUBLIC_KEY
    from raydetect.report.experiments import evaluation_report, key_note
    from raydetect.stages.runner import run_evaluation

    src = source_config(input, kind, "image", "id", "label", limit, offset)
    if mode not in ATTACK_MODES:
        raise RaydetectError(f"--mode must be one of {', '.join(ATTACK_MODES)}; got {mode!r}")
    det, mcfg = load_for_audit(detector, device=device)  # fail fast, before Ray starts
    eot = default_eot(det.configs()[1].jitter, eot)
    suite = [
        a.validate()
        for e in parse_eps_list(eps, [4 / 255])
        for a in robustness_suite(e, mcfg.name, mode, adaptive_steps, restarts, eot, smooth, adaptive=not no_adaptive)  # type: ignore[arg-type]
    ]
    _, rows = run_evaluation(src, store.join(out, "rows"), detector, suite, resource_config(batch_size, actors,
                             gpus_per_actor, cpus_per_actor), address=address, device=device, compare=compare or ())  # fmt: skip
    images = rows[0]["n_clean"] if rows else 0
    key = key_note(det.configs()[1].jitter, det.views_key == PUBLIC_KEY, eot)
    report = evaluation_report(detector, input, rows, images, key)
    path = write_report(out, report, {"bundle": detector, "robustness": rows, "views_key": key})
    for r in rows:
        who = f"[{r['detector']}] " if "detector" in r else ""
        typer.echo(f"{who}{r['attack']}: fools {r['success_rate']:.0%}, ROC AUC {r['auc']:.3f}, evaded {r['evaded']:.0%}")
    typer.echo(f"report: {path}")


@app.command("export")
@handle_errors
def export_images(
    attacks_dir: Annotated[str, typer.Argument(help="Output directory of `raydetect attack`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <kind>/<id>.png into.")],
    kind: Annotated[list[str] | None, typer.Option("--kind", help="clean and/or adversarial (default: both).")] = None,
    include_failed: Annotated[
        bool, typer.Option("--include-failed", help="Also export adversarial images whose attack failed.")
    ] = False,
) -> None:
    """Write the attack job's lossless PNGs as image files (to inspect them, or to audit a mixed folder)."""
    kinds = tuple(kind or ["clean", "adversarial"])
    for k in kinds:
        if k not in ("clean", "adversarial"):
            raise RaydetectError(f"--kind must be clean or adversarial; got {k!r}")
    counts = store.export_images(attacks_dir, str(out), kinds, only_success=not include_failed)
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()) + f" images in {out}")


SubmitAddressOpt = Annotated[
    str | None, typer.Option("--address", help="Job server URL (default: $RAY_JOB_ADDRESS, $RAY_ADDRESS, http://127.0.0.1:8265).")
]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def submit(
    ctx: typer.Context,
    address: SubmitAddressOpt = None,
    working_dir: Annotated[Path, typer.Option("--working-dir", help="Directory shipped to the cluster (this checkout).")] = Path(
        "."
    ),
    pip: Annotated[list[str] | None, typer.Option("--pip", help="Extra pip package for the job's environment; repeat.")] = None,
    with_deps: Annotated[
        bool, typer.Option("--with-deps", help="Install raydetect's dependencies in the job (for a bare Ray image).")
    ] = False,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE environment variable for the job; repeat.")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Submission id (default: Ray picks one).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return after submission instead of following the logs.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop following after this many seconds (the job keeps running).")
    ] = None,
) -> None:
    """Send a raydetect command to a Ray cluster: raydetect submit [OPTIONS] -- audit DATA --detector B --out OUT.

    The command after -- runs as `python -m raydetect ...` on the cluster, in a runtime environment that ships
    --working-dir. It is checked here first, so a typo fails before anything is sent, and so does a local path
    the cluster would not see (relative and not shipped, e.g. under the git-ignored runs/).
    """
    args = list(ctx.args)
    if args and args[0] == "--":
        args = args[1:]
    sub.entrypoint(args)
    group = typer.main.get_command(app)
    try:
        sub_command = group.commands[args[0]]  # type: ignore[attr-defined]
        sub_ctx = sub_command.make_context(args[0], list(args[1:]), resilient_parsing=False)
    except Exception as exc:  # click usage errors: report them as ours
        raise RaydetectError(f"the command to submit is not valid: {getattr(exc, 'message', exc)}") from exc
    for note in sub.check_paths(args[0], sub_ctx.params, str(working_dir)):
        typer.echo(f"note: {note}", err=True)
    env_vars = dict(parse_params(env)) if env else None
    packages = [*(sub.package_requirements() if with_deps else []), *(pip or [])]
    jid = sub.submit(args, address, str(working_dir), packages, {k: str(v) for k, v in (env_vars or {}).items()}, job_id)
    typer.echo(f"submitted job {jid} to {sub.resolve_address(address)}")
    if no_wait:
        typer.echo(f"follow it with: raydetect logs {jid} --follow")
        return
    state = sub.follow(jid, address, timeout=timeout)
    typer.echo(f"job {jid}: {state}")
    if state != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
@handle_errors
def status(job_id: Annotated[str, typer.Argument(help="Job id printed by submit.")], address: SubmitAddressOpt = None) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    typer.echo(sub.status(job_id, address).split(".")[-1])


@app.command()
@handle_errors
def logs(
    job_id: Annotated[str, typer.Argument(help="Job id printed by submit.")],
    address: SubmitAddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a submitted job's logs."""
    if follow:
        state = sub.follow(job_id, address)
        typer.echo(f"job {job_id}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(1)
    else:
        typer.echo(sub.logs(job_id, address), nl=False)


@app.command()
@handle_errors
def stop(job_id: Annotated[str, typer.Argument(help="Job id printed by submit.")], address: SubmitAddressOpt = None) -> None:
    """Stop a submitted job."""
    typer.echo("stopped" if sub.stop(job_id, address) else "not running")


def run() -> None:
    app()


def run_job(command: str) -> None:
    """Entry point of jobs/<command>.py: ``raydetect <command>`` with the script's arguments."""
    app([command, *sys.argv[1:]], prog_name="raydetect")
