"""Tables and reports: the paper's Table 1 (attack success) and Table 2 (detection), as Markdown and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raydetect.config import format_eps

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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def attack_label(row: dict[str, Any]) -> str:
    method = {
        "bim": f"BIM-{row['steps']}",
        "pgd": f"PGD-{row['steps']}",
        "fgsm": "FGSM",
        "paper_bim": "paper's BIM (= 1 step)",
    }.get(row["method"], row["method"])
    return f"{MODE_LABEL.get(row['mode'], row['mode'])}, {method}, eps={format_eps(row['eps'])}"


def table1(attack_rows: Sequence[dict[str, Any]]) -> str:
    """Table 1: attack success over correctly classified images."""
    rows = [[attack_label(r), f"{pct(r['success_rate'], 2)} ({r['n_success']}/{r['n_correct']})"] for r in attack_rows]
    return markdown_table(["Attack", "Success rate"], rows)


def table2(detection_rows: Sequence[dict[str, Any]]) -> str:
    """Table 2: detection per attack and detector, with the metrics the paper left out."""
    rows = []
    for r in detection_rows:
        rows.append(
            [
                r["attack"],
                r["detector"],
                r["n_test_pairs"],
                f"{pct(r['accuracy'], 1)} {interval(r.get('accuracy_ci'), 3)}",
                pct(r["accuracy_at_half"], 1),
                f"{num(r['auc'])} {interval(r.get('auc_ci'))}",
                pct(r["tpr_at_1fpr"], 1),
                pct(r["tpr_at_5fpr"], 1),
                pct(r["fpr"], 1),
            ]
        )
    return markdown_table(
        [
            "Attack",
            "Detector",
            "Test pairs",
            "Accuracy [95% CI]",
            "Acc@0.5",
            "ROC AUC [95% CI]",
            "TPR@1%FPR",
            "TPR@5%FPR",
            "Held-out FPR",
        ],
        rows,
    )


def write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays, and tuples."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def transfer_table(matrix: dict[str, dict[str, float]]) -> str:
    """ROC AUC of a detector trained on one attack (rows) and tested on another (columns)."""
    tests = sorted({b for row in matrix.values() for b in row})
    rows = [[a, *(num(matrix[a].get(b)) for b in tests)] for a in sorted(matrix)]
    return markdown_table(["trained on \\ tested on", *tests], rows)


def results_section(
    title: str,
    description: str,
    attack_rows: Sequence[dict[str, Any]],
    detection_rows: Sequence[dict[str, Any]],
    transfer: dict[str, dict[str, dict[str, float]]],
    bundle: str | None,
) -> list[str]:
    """Markdown lines for one experiment: Table 1, Table 2, transfer matrices, the bundle."""
    lines = [f"## {title}", "", description, ""]
    lines += ["### Table 1: attack success (over correctly classified images)", "", table1(attack_rows), ""]
    lines += ["### Table 2: detection on held-out pairs", ""]
    lines += [table2(detection_rows) if detection_rows else "_no attack succeeded often enough to train a detector_", ""]
    evaluated = {r["attack"] for r in detection_rows}
    few = [f"{r['attack']} ({r['n_success']} pairs)" for r in attack_rows if r["n_success"] and r["attack"] not in evaluated]
    if few:
        lines += [f"_Too few successful pairs for a detector of their own (they still join the bundle): {', '.join(few)}._", ""]
    for kind, matrix in transfer.items():
        lines += [f"### Transfer ({kind}): ROC AUC, trained on one attack, tested on another", "", transfer_table(matrix), ""]
    if bundle:
        lines += [f"Detector bundle trained on all attacks above: `{bundle}`", ""]
    return lines


FOOTNOTE = (
    "Accuracy is at a threshold chosen on clean validation images for a 5% false-positive rate; Acc@0.5 is the "
    "paper's plain accuracy. Intervals are 95% bootstrap over test pairs; a clean image and its adversarial twin "
    "are always on the same side of every split."
)
