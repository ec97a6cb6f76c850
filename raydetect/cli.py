"""The ``raydetect`` command line. It parses options, builds validated configs and calls the library.

Library errors (:class:`RaydetectError`) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from raydetect.config import (
    ATTACK_MODES,
    AttributionConfig,
    FeatureConfig,
    ModelConfig,
    parse_eps,
)
from raydetect.errors import RaydetectError

app = typer.Typer(
    name="raydetect",
    help="Detect adversarial images by their explanations (Integrated Gradients), at cluster scale on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
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
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
EpsOpt = Annotated[
    list[str] | None, typer.Option("--eps", help="L-inf budget on [0,1] pixels, e.g. 4/255 or 0.1; repeat for several.")
]
StepsOpt = Annotated[int, typer.Option("--steps", help="BIM iterations.")]
ModesOpt = Annotated[
    list[str] | None,
    typer.Option("--mode", help=f"Attack modes ({', '.join(ATTACK_MODES)}); repeat for several. Default: all three."),
]
ExplainerOpt = Annotated[str, typer.Option("--explainer", help="ig, layer_ig, gradient_shap, ig_smoothgrad or saliency.")]
IGStepsOpt = Annotated[int, typer.Option("--ig-steps", help="Integrated Gradients steps (gradient passes per explanation).")]
BaselineOpt = Annotated[str, typer.Option("--baseline", help="IG baseline: black, blur or noise (train for gradient_shap).")]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="For layer_ig: early, middle, late or a module path.")]
QuantilesOpt = Annotated[int, typer.Option("--quantiles", help="Points the sorted attributions are resampled to.")]
DescriptorsOpt = Annotated[
    list[str] | None, typer.Option("--descriptor", help="Descriptor parts; repeat for several. Default: the study's best set.")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for targets, splits and detectors.")]


def model_config(model: str, weights: Path | None, random_weights: bool, device: str) -> ModelConfig:
    return ModelConfig(
        name=model, weights=str(weights) if weights else None, random_weights=random_weights, device=device
    ).validate()


def attribution_config(explainer: str, ig_steps: int, baseline: str, layer: str | None) -> AttributionConfig:
    return AttributionConfig(explainer=explainer, n_steps=ig_steps, baseline=baseline, layer=layer).validate()  # type: ignore[arg-type]


def feature_config(descriptors: list[str] | None, quantiles: int) -> FeatureConfig:
    if descriptors:
        return FeatureConfig(descriptors=tuple(descriptors), quantiles=quantiles).validate()  # type: ignore[arg-type]
    return FeatureConfig(quantiles=quantiles).validate()


def parse_eps_list(values: list[str] | None, default: list[float]) -> list[float]:
    return [parse_eps(v) for v in values] if values else default


@app.command()
@handle_errors
def reproduce(
    data: Annotated[
        str, typer.Option("--data", "-d", help="ImageNet-style folder (<wnid>/<file>), or 'digits' for sklearn's digits.")
    ] = "digits",
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for report.md and results.json.")] = Path("runs/reproduce"),
    model: ModelOpt = "digits_cnn",
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
    explainer: ExplainerOpt = "ig",
    ig_steps: IGStepsOpt = 16,
    baseline: BaselineOpt = AttributionConfig.baseline,
    layer: LayerOpt = None,
    quantiles: QuantilesOpt = 64,
    descriptor: DescriptorsOpt = None,
    detector: Annotated[
        list[str] | None,
        typer.Option("--detector", help="lr, rf, xgboost; repeat for several. Default: lr and rf, as the paper."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most this many images.")] = None,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
) -> None:
    """Run the paper's experiment in one process: attack, explain, fit detectors, write Tables 1 and 2.

    The corrected protocol (iterative BIM at --eps, default 4/255, 8-bit adversarials, per-image
    baselines, pair-aware splits, ROC AUC) runs beside the paper's own (one eps=0.1 step,
    explanations against the twin), so the gap between them is visible.
    """
    from raydetect.reproduce import run_reproduction

    if protocol not in ("corrected", "paper", "both"):
        raise RaydetectError(f"protocol must be corrected, paper or both; got {protocol!r}")
    detectors = tuple(detector or ["lr", "rf"])
    for d in detectors:
        if d not in ("lr", "rf", "xgboost"):
            raise RaydetectError(f"detector must be lr, rf or xgboost; got {d!r}")
    path = run_reproduction(
        data=data,
        out=out,
        model_cfg=model_config(model, weights, random_weights, device),
        protocols=("paper", "corrected") if protocol == "both" else (protocol,),  # type: ignore[arg-type]
        eps=parse_eps_list(eps, [4 / 255]),
        steps=steps,
        attribution=attribution_config(explainer, ig_steps, baseline, layer),
        features=feature_config(descriptor, quantiles),
        detectors=detectors,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
    )
    typer.echo(f"report: {path}")


def run() -> None:
    app()
