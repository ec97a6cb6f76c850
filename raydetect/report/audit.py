"""The audit report: counts, the score histogram at the threshold, the most suspicious images."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from raydetect.detect import Detector
from raydetect.errors import RaydetectError
from raydetect.report.document import Heading, Image, Paragraph, Report, Table
from raydetect.report.tables import pct
from raydetect.store import join, read_output


def score_histogram(scores: np.ndarray, threshold: float, target_fpr: float, flagged: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if len(scores):
        ax.hist(scores, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.3f} (target FPR {target_fpr:.0%})")
    ax.set_xlabel("adversarial score")
    ax.set_ylabel("images")
    ax.set_yscale("symlog")
    ax.legend(loc="upper center")
    ax.set_title(f"{len(scores)} images scored, {flagged} flagged")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def bundle_note(det: Detector) -> str:
    """What the threshold promises on clean images, and who signed the bundle (as far as was checked)."""
    cal = det.calibration
    note = ""
    if cal.get("fpr_range"):
        lo, hi = cal["fpr_range"]
        note = (
            f"On clean images like those it was calibrated on ({cal['rows']} clean validation images), the threshold's "
            f"expected false-positive rate is {pct(cal['expected_fpr'])}, between {pct(lo)} and {pct(hi)} with 95% "
            "probability. "
        )
    return note + f"Bundle: {det.provenance or 'provenance not checked'}."


def audit_report(out: str, det: Detector, bundle: str, top: int = 20) -> Report:
    """The report of the audit rows under ``<out>/rows``."""
    table = read_output(join(out, "rows"))
    if table is None:
        raise RaydetectError(f"no audit rows under {out}")
    rows: list[dict[str, Any]] = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    flagged = [r for r in ok if r["adversarial"]]
    suspicious = sorted(ok, key=lambda r: -r["score"])[:top]
    reasons: dict[str, int] = {}
    for r in errors:
        key = r["error"].split(":")[0] if r["status"] == "error" else r["status"]
        reasons[key] = reasons.get(key, 0) + 1
    overall = det.metrics.get("overall", {})
    counts = [
        ["inputs", len(rows)],
        ["scored", len(ok)],
        ["flagged adversarial", f"{len(flagged)} ({pct(len(flagged) / len(ok)) if ok else 'n/a'})"],
        ["not scored (errors)", len(errors)],
    ]
    top_rows = [
        [i + 1, f"`{r['path']}`", r["pred_name"] or r["pred"], f"{r['conf']:.3f}", f"{r['score']:.3f}",
         "yes" if r["adversarial"] else "no"]
        for i, r in enumerate(suspicious)
    ]  # fmt: skip
    report = Report("raydetect audit")
    report.figures["score_histogram.png"] = score_histogram(
        np.array([r["score"] for r in ok]), det.threshold, det.target_fpr, len(flagged)
    )
    report.add(
        Paragraph(
            f"Detector `{bundle}` ({det.kind}, trained on {', '.join(det.trained_on)}; threshold {det.threshold:.4f} "
            f"for {det.target_fpr:.0%} false positives on clean validation images; "
            f"held-out ROC AUC {overall.get('auc', float('nan')):.3f})."
        ),
        Table(["", "count"], counts),
        Image("score_histogram.png", "score histogram"),
        Heading(f"The {len(suspicious)} most suspicious images"),
        Table(["#", "path", "predicted", "confidence", "score", "flagged"], top_rows) if top_rows else Paragraph("_none scored_"),
    )
    if reasons:
        report.add(Heading("Inputs not scored"), Table(["reason", "count"], sorted(reasons.items(), key=lambda kv: -kv[1])))
    report.add(Paragraph(bundle_note(det)))
    report.add(
        Paragraph(
            "A flag means the image's explanation looks like those of the adversarial images the detector was trained on. "
            "It is evidence to inspect, not proof; attacks unlike the training attacks may go unflagged."
        )
    )
    return report
