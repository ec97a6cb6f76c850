"""Training and reproduction reports: Tables 1 and 2, transfer matrices and the paper's figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.report.document import Heading, Paragraph, Report, Table
from raydetect.report.figures import Figures, figure_blocks
from raydetect.report.tables import (
    FOOTNOTE,
    ROBUSTNESS_NOTE,
    comparison_table,
    pct,
    results_section,
    robustness_table,
)


def _add_figures(report: Report, figures: Figures | None, prefix: str = "") -> None:
    if figures is None:
        return
    blocks, files = figure_blocks(figures, prefix)
    if blocks:
        report.add(Heading("Figures", 3), *blocks)
    report.figures.update(files)


def training_report(
    features_dir: str,
    attack_rows: list[dict[str, Any]],
    detection_rows: list[dict[str, Any]],
    transfer: dict[str, dict[str, dict[str, float]]],
    bundle: str | None,
    figures: Figures | None = None,
    calibration: dict[str, Any] | None = None,
    bundle_metrics: dict[str, Any] | None = None,
    splits: str = "",
    rounds: Sequence[dict[str, Any]] = (),
) -> Report:
    """``splits``: how the rows were grouped for the splits (``TrainingResult.splits``); ``rounds``: the
    adversarial training rounds (``detect.training.round_record``)."""
    report = Report("raydetect training")
    description = f"Features: `{features_dir}`." + (f" {splits}" if splits else "")
    report.add(*results_section("Detection", description, attack_rows, detection_rows, transfer, bundle,
                                calibration, bundle_metrics))  # fmt: skip
    if rounds:
        report.add(*rounds_section(rounds))
    _add_figures(report, figures)
    return report.add(FOOTNOTE)


def reproduction_report(results: Sequence[Any], attribution: AttributionConfig, features: FeatureConfig) -> Report:
    """``results``: one ``reproduce.ReproResult`` per protocol (its ``figures`` drawn if set)."""
    report = Report("raydetect reproduction")
    for r in results:
        title = "Paper protocol (replication)" if r.protocol == "paper" else "Corrected protocol"
        baseline = "pair (each image against its twin)" if r.protocol == "paper" else attribution.baseline
        description = (
            f"Model `{r.model}`; {r.n_images} images, {r.n_correct} classified correctly (attacked). "
            f"Explainer `{attribution.explainer}` ({attribution.n_steps} steps, baseline `{baseline}`); "
            f"descriptors {', '.join(features.descriptors)} (K={features.quantiles}). Took {r.seconds:.0f} s"
            + (f" ({r.resumed} images done by an earlier run were not redone)." if r.resumed else ".")
        )
        report.add(*results_section(title, description, r.attack_rows, r.detection_rows, r.transfer, r.bundle,
                                    r.bundle_calibration, r.bundle_metrics))  # fmt: skip
        if r.robustness:
            report.add(*robustness_section(r.robustness, r.robustness_images))
        _add_figures(report, r.figures, f"{r.protocol}_")
    return report.add(FOOTNOTE)


def rounds_section(rounds: Sequence[dict[str, Any]]) -> list[Any]:
    """Adversarial training: what each round's white-box attack got past the detector it attacked."""
    body = [[r["round"], f"`{r['attacked_detector']}`", r["attacked"], r["fooled"], r["evaded"], pct(r["evaded_rate"]),
             f"{r['threshold_before']:.4f}"] for r in rounds]  # fmt: skip
    heads = ["round", "detector attacked", "images attacked", "fooled the model", "passed the detector", "evaded",
             "its threshold"]  # fmt: skip
    return [
        Heading("Adversarial training rounds", 3),
        Paragraph(
            "Each round attacked every image with the white-box adaptive attack against the detector before it, and "
            "the bundle was fitted again with the adversarials that fooled the model (attack `<name>-round<N>` above; "
            "held-out images' rows only measure). A falling evaded share says the rounds are learning this attacker. "
            "It is not the bundle's figure against an attacker: run `raydetect evaluate` on images it never saw, "
            "which attacks the final bundle afresh."
        ),
        Table(heads, body),
    ]


def robustness_section(rows: list[dict[str, Any]], images: int) -> list[Any]:
    return [
        Heading("Attacks the detector never trained on, and attackers who know it", 3),
        Paragraph(f"{images} held-out correctly classified images (never used to fit or calibrate the bundle)."),
        robustness_table(rows),
        ROBUSTNESS_NOTE,
    ]


def evaluation_report(bundle: str, source: str, rows: list[dict[str, Any]], images: int, key: str = "") -> Report:
    """``key``: what the attackers knew of the views' random strengths (see ``key_note``). Rows with a
    ``detector`` (``evaluate --compare``) make one comparison table."""
    report = Report("raydetect evaluation")
    if rows and "detector" in rows[0]:
        bundles = ", ".join(f"`{r['detector']}` = `{r['bundle']}`" for r in {r["detector"]: r for r in rows}.values())
        return report.add(
            Paragraph(f"Detectors {bundles} on `{source}`, scoring the same clean and adversarial images."),
            Heading("Detectors compared, attack by attack", 3),
            Paragraph(f"{images} held-out correctly classified images (never used to fit or calibrate any bundle)."),
            comparison_table(rows),
            ROBUSTNESS_NOTE,
            Paragraph("*Evaded at 1% FPR* uses the threshold that flags 1% of these clean images (needs 100 of them). "
                      "Passes per audited image: what each detector costs an audit."),
        )  # fmt: skip
    report.add(Paragraph(f"Detector `{bundle}` on `{source}`." + (f" {key}" if key else "")))
    return report.add(*robustness_section(rows, images))


def key_note(jitter: float, public: bool, eot: int) -> str:
    """One sentence on what an attacker who holds the bundle knows of its views' draws."""
    if jitter == 0:
        return "The detector's views have fixed strengths: nothing random for an attacker to guess."
    if public:
        return (
            "The views' strengths were drawn with the public key (RAYDETECT_SECRET unset), so the adaptive attacker "
            "computed every draw, as anyone who reads raydetect can. Set RAYDETECT_SECRET to deny it that."
        )
    return (
        "The views' strengths were drawn with the auditor's secret key; the adaptive attacker guessed them "
        f"(EOT over {eot} draws per step)."
    )
