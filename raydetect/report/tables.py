"""The paper's Table 1 (attack success) and Table 2 (detection), transfer matrices, number formats."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import Any

from raydetect import registry
from raydetect.config import format_eps
from raydetect.detect.metrics import MAX_FAILED_SHARE, TOO_FEW_CLEAN
from raydetect.report.document import Block, Heading, Paragraph, Table

MODE_LABEL = {"untargeted": "Untargeted", "random": "Targeted (random)", "second": "Targeted (2nd most confident)"}


def pct(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.{digits}f}%"


def num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def interval(ci: Sequence[float] | None, digits: int = 3) -> str:
    if not ci or any(c is None or math.isnan(c) for c in ci):
        return "n/a"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def median_range(values: Sequence[float], digits: int = 1) -> str:
    """``median (min-max)`` of repeated measurements, as the benchmark tables show them."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def newest_run(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of a benchmark's newest run (its last record's command at its commit), in order."""
    key = (records[-1]["command"], records[-1]["commit"])
    return [r for r in records if (r["command"], r["commit"]) == key]


def attack_label(row: dict[str, Any]) -> str:
    spec = registry.ATTACKS.get(row["method"])
    method = spec.label.format(steps=row.get("steps", "")) if spec else row["method"]
    name = row.get("attack", "")
    stop = re.search(r"-(stop|k[0-9.e+]+)(-|$)", name)  # AttackConfig.name's stop-margin part
    if stop:
        method += " stopped at " + ("the first success" if stop[1] == "stop" else f"margin {stop[1][1:]}")
    return f"{MODE_LABEL.get(row['mode'], row['mode'])}, {method}, eps={format_eps(row['eps'])}"


def table1(attack_rows: Sequence[dict[str, Any]]) -> Table:
    """Table 1: attack success over correctly classified images."""
    rows = [[attack_label(r), f"{pct(r['success_rate'], 2)} ({r['n_success']}/{r['n_correct']})"] for r in attack_rows]
    return Table(["Attack", "Success rate"], rows)


def tpr_cell(r: dict[str, Any], key: str, fpr: float) -> str:
    """TPR at a fixed FPR, or why it cannot be estimated (fewer than 1/fpr clean test rows)."""
    v, n_clean = r.get(key), r.get("n_test_clean")
    if (v is None or (isinstance(v, float) and math.isnan(v))) and n_clean is not None and n_clean < math.ceil(1 / fpr - 1e-9):
        return TOO_FEW_CLEAN
    return pct(v, 1)


def rate_interval(ci: Sequence[float] | None) -> str:
    if not ci or any(c is None or math.isnan(c) for c in ci):
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def table2(detection_rows: Sequence[dict[str, Any]]) -> Table:
    """Table 2: detection per attack and detector, with the metrics the paper left out."""
    rows = [
        [
            r["attack"], r["detector"], f"{r.get('n_test_clean', '?')} / {r.get('n_test_adversarial', '?')}",
            f"{pct(r['accuracy'], 1)} {interval(r.get('accuracy_ci'), 3)}", pct(r["accuracy_at_half"], 1),
            f"{num(r['auc'])} {interval(r.get('auc_ci'))}", tpr_cell(r, "tpr_at_1fpr", 0.01), tpr_cell(r, "tpr_at_5fpr", 0.05),
            f"{pct(r['fpr'], 1)}{rate_interval(r.get('fpr_ci'))}", r.get("calibration_rows", "?"),
        ]
        for r in detection_rows
    ]  # fmt: skip
    headers = ["Attack", "Detector", "Test images (clean / adv.)", "Balanced accuracy [95% CI]", "Bal. acc@0.5",
               "ROC AUC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "Held-out FPR [95% CI]", "Threshold's clean rows"]  # fmt: skip
    return Table(headers, rows)


def cross_fitted(cal: dict[str, Any]) -> bool:
    """Whether a bundle's threshold came from out-of-fold scores (else from held-out validation images)."""
    return str(cal.get("method", "")).startswith("cross-fitted")


def calibration_rows(cal: dict[str, Any]) -> str:
    """The rows a threshold was chosen on, in words: '412 clean validation images'."""
    return f"{cal['rows']} {'out-of-fold scores of clean training images' if cross_fitted(cal) else 'clean validation images'}"


def calibration_paragraph(cal: dict[str, Any], overall: dict[str, Any] | None = None) -> Paragraph:
    """What the bundle's threshold promises on new clean images, and what the test split measured."""
    lo, hi = cal["fpr_range"]
    if cross_fitted(cal):
        where = f"{calibration_rows(cal)}, each scored by a detector fitted on the other folds' images"
        how = "cross-fitted threshold: the range is exact for those detectors and close for the bundle"
    else:
        where = f"{calibration_rows(cal)} that no detector was fitted on"
        how = "split-conformal threshold; more validation images narrow this range"
    text = (
        f"The bundle's threshold {cal['threshold']:.4f} was chosen on {where}, for a target false-positive rate of "
        f"{pct(cal['target_fpr'])}: on new clean images its expected FPR is {pct(cal['expected_fpr'])}, and with 95% "
        f"probability between {pct(lo)} and {pct(hi)} ({how})."
    )
    if not cal.get("achievable", True):
        text += f" Too few validation images to promise {pct(cal['target_fpr'])}: the FPR may be higher."
    if overall:
        n = overall.get("n_test_clean", 0)
        text += f" Measured on {n} held-out clean images: {pct(overall['fpr'])}{rate_interval(overall.get('fpr_ci'))}."
    return Paragraph(text)


def bootstrap_note(detection_rows: Sequence[dict[str, Any]]) -> Paragraph | None:
    """Say which intervals left out resamples with no defined value (say, no adversarial row drawn)."""
    notes = []
    for r in detection_rows:
        boot = r.get("bootstrap") or {}
        for metric, failed in (boot.get("failed") or {}).items():
            if failed:
                notes.append(f"{r['attack']} / {r['detector']} {metric}: {failed} of {boot['resamples']}")
    if not notes:
        return None
    return Paragraph(
        "_Bootstrap resamples with no defined value (left out; an interval where they exceed "
        f"{100 * MAX_FAILED_SHARE:.1f}% of resamples is shown as n/a): {'; '.join(notes)}._"
    )


def transfer_table(matrix: dict[str, dict[str, float]]) -> Table:
    """ROC AUC of a detector trained on one attack (rows) and tested on another (columns)."""
    tests = sorted({b for row in matrix.values() for b in row})
    return Table(["trained on \\ tested on", *tests], [[a, *(num(matrix[a].get(b)) for b in tests)] for a in sorted(matrix)])


def results_section(
    title: str,
    description: str,
    attack_rows: Sequence[dict[str, Any]],
    detection_rows: Sequence[dict[str, Any]],
    transfer: dict[str, dict[str, dict[str, float]]],
    bundle: str | None,
    calibration: dict[str, Any] | None = None,
    bundle_metrics: dict[str, Any] | None = None,
) -> list[Block]:
    """One experiment: Table 1, Table 2, transfer matrices, the bundle and its threshold."""
    blocks: list[Block] = [Heading(title), Paragraph(description)]
    blocks += [Heading("Table 1: attack success (over correctly classified images)", 3), table1(attack_rows)]
    blocks.append(Heading("Table 2: detection on held-out pairs", 3))
    blocks.append(
        table2(detection_rows) if detection_rows else Paragraph("_no attack succeeded often enough to train a detector_")
    )
    evaluated = {r["attack"] for r in detection_rows}
    few = [f"{r['attack']} ({r['n_success']} pairs)" for r in attack_rows if r["n_success"] and r["attack"] not in evaluated]
    if few:
        blocks.append(
            Paragraph(f"_Too few successful pairs for a detector of their own (they still join the bundle): {', '.join(few)}._")
        )
    note = bootstrap_note(detection_rows)
    if note:
        blocks.append(note)
    for kind, matrix in transfer.items():
        blocks += [Heading(f"Transfer ({kind}): ROC AUC, trained on one attack, tested on another", 3), transfer_table(matrix)]
    if bundle:
        blocks.append(Paragraph(f"Detector bundle trained on all attacks above: `{bundle}`"))
    if calibration and calibration.get("fpr_range"):
        blocks.append(calibration_paragraph(calibration, (bundle_metrics or {}).get("overall")))
    return blocks


FOOTNOTE = Paragraph(
    "Every correctly classified image takes part, also those no attack fooled: images are split by id into fit, "
    "validation and test sides, and a clean image and its adversarial twins are always on the same side. Each "
    "per-attack detector's threshold is chosen on the validation side's clean images only, for the target "
    "false-positive rate (split-conformal: expected FPR at most the target); the bundle's is described above. "
    "Accuracy is balanced (the mean of TPR and 1-FPR), so it does not depend on how many adversarial rows there "
    "are per clean one; Bal. acc@0.5 is the same at score > 0.5, the paper's accuracy on its balanced pairs. "
    "TPR@x%FPR needs at least 1/x clean test images, else it reads "
    f"'{TOO_FEW_CLEAN}'. Held-out FPR intervals are exact binomial (Clopper-Pearson); accuracy and ROC AUC "
    "intervals are 95% bootstrap over test images."
)


def knows(row: dict[str, Any]) -> str:
    """What the attacker knows of the detector."""
    knows = registry.knows_detector(row["method"])
    if knows:
        return knows
    return "no" + (f" (transfer from {row['attack'].split('-from-')[1]})" if "-from-" in row["attack"] else "")


def robustness_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Per attack: success, separability, and what gets past the detector at its own threshold."""
    body = [
        [
            r["attack"], knows(r), f"{pct(r['success_rate'])} ({r['n_success']}/{r['n_attacked']})", num(r["auc"]),
            pct(r["tpr_at_1fpr"]) if r["n_clean"] >= 100 else "n/a (too few clean rows)", pct(r["tpr_at_5fpr"]),
            pct(r["flagged"]), f"**{pct(r['evaded'])}**", f"{r['passes']:.0f}",
        ]
        for r in rows
    ]  # fmt: skip
    headers = ["Attack", "Knows the detector?", "Fools the model", "ROC AUC", "TPR@1%FPR", "TPR@5%FPR",
               "Flagged at threshold", "Evaded", "Gradient passes/image"]  # fmt: skip
    return Table(headers, body)


ATTACK_ORDER = [
    *(s.name for s in (registry.BIM, registry.PGD)), "bim-stop",
    *(s.name for s in (registry.DEEPFOOL, registry.CW_L2, registry.SQUARE)), "jpeg", "transfer",
    *(s.name for s in (registry.SQUEEZE_EOT, registry.ADAPTIVE)),
]  # fmt: skip


def attack_rank(r: dict[str, Any]) -> tuple[int, float, str]:
    """Robustness rows in the order the docs show them: trained-on strengths first, then unseen, then
    attacks that know the detector; larger budgets first."""
    name = r["attack"]
    kind = "jpeg" if "-jpeg" in name else "bim-stop" if "-stop" in name else "transfer" if "-from-" in name else r["method"]
    return ATTACK_ORDER.index(kind), -r["eps"], name


def comparison_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Per attack, one line per detector (``evaluate --compare``): the same images, each bundle's own threshold."""
    order = sorted(rows, key=lambda r: (attack_rank(r), r["detector"]))
    body = [
        [
            r["attack"], knows(r), r["detector"], f"{r['n_success']}/{r['n_attacked']}", num(r["auc"]),
            pct(r["tpr_at_1fpr"]), pct(r["tpr_at_5fpr"]), f"**{pct(r['evaded'])}**", pct(r.get("evaded_at_1fpr")),
            f"{r['audit_passes']}",
        ]
        for r in order
    ]  # fmt: skip
    headers = ["Attack", "Knows the detector?", "Detector", "Fool the model", "ROC AUC", "TPR@1%FPR", "TPR@5%FPR",
               "Evaded (bundle threshold)", "Evaded at 1% FPR", "Passes per audited image"]  # fmt: skip
    return Table(headers, body)


ROBUSTNESS_NOTE = Paragraph(
    "ROC AUC and TPR compare each attack's successful adversarials with the clean images of the same held-out set. "
    "*Evaded* is the share of attacked images that fool the model **and** pass the detector at the bundle's threshold: "
    "what an attacker who plants images gets. Gradient passes are the attacker's cost per image (a pass through the "
    "explanation's second-order graph costs about 2-3 first-order passes)."
)
