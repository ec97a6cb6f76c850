"""The paper's Table 1 (attack success) and Table 2 (detection), transfer matrices, number formats."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from raydetect.config import format_eps
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


def attack_label(row: dict[str, Any]) -> str:
    method = {
        "bim": f"BIM-{row['steps']}",
        "pgd": f"PGD-{row['steps']}",
        "fgsm": "FGSM",
        "paper_bim": "paper's BIM (= 1 step)",
    }.get(row["method"], row["method"])
    return f"{MODE_LABEL.get(row['mode'], row['mode'])}, {method}, eps={format_eps(row['eps'])}"


def table1(attack_rows: Sequence[dict[str, Any]]) -> Table:
    """Table 1: attack success over correctly classified images."""
    rows = [[attack_label(r), f"{pct(r['success_rate'], 2)} ({r['n_success']}/{r['n_correct']})"] for r in attack_rows]
    return Table(["Attack", "Success rate"], rows)


def table2(detection_rows: Sequence[dict[str, Any]]) -> Table:
    """Table 2: detection per attack and detector, with the metrics the paper left out."""
    rows = [
        [
            r["attack"], r["detector"], r["n_test_pairs"], f"{pct(r['accuracy'], 1)} {interval(r.get('accuracy_ci'), 3)}",
            pct(r["accuracy_at_half"], 1), f"{num(r['auc'])} {interval(r.get('auc_ci'))}", pct(r["tpr_at_1fpr"], 1),
            pct(r["tpr_at_5fpr"], 1), pct(r["fpr"], 1),
        ]
        for r in detection_rows
    ]  # fmt: skip
    headers = ["Attack", "Detector", "Test pairs", "Accuracy [95% CI]", "Acc@0.5", "ROC AUC [95% CI]", "TPR@1%FPR",
               "TPR@5%FPR", "Held-out FPR"]  # fmt: skip
    return Table(headers, rows)


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
) -> list[Block]:
    """One experiment: Table 1, Table 2, transfer matrices, the bundle."""
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
    for kind, matrix in transfer.items():
        blocks += [Heading(f"Transfer ({kind}): ROC AUC, trained on one attack, tested on another", 3), transfer_table(matrix)]
    if bundle:
        blocks.append(Paragraph(f"Detector bundle trained on all attacks above: `{bundle}`"))
    return blocks


FOOTNOTE = Paragraph(
    "Accuracy is at a threshold chosen on clean validation images for a 5% false-positive rate; Acc@0.5 is the "
    "paper's plain accuracy. Intervals are 95% bootstrap over test pairs; a clean image and its adversarial twin "
    "are always on the same side of every split."
)


def knows(row: dict[str, Any]) -> str:
    """What the attacker knows of the detector."""
    if row["method"] == "adaptive":
        return "white box (weights)"
    if row["method"] == "squeeze_eot":
        return "configuration"
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


ROBUSTNESS_NOTE = Paragraph(
    "ROC AUC and TPR compare each attack's successful adversarials with the clean images of the same held-out set. "
    "*Evaded* is the share of attacked images that fool the model **and** pass the detector at the bundle's threshold: "
    "what an attacker who plants images gets. Gradient passes are the attacker's cost per image (a pass through the "
    "explanation's second-order graph costs about 2-3 first-order passes)."
)
