"""Audit: stream any image dataset through the model, its explanation and a detector bundle.

One output row per input (errors included): path, predicted class and confidence, adversarial
score, verdict at the bundle's threshold, status and reason. A summary report (Markdown, HTML,
PNG figures) lists counts, the most suspicious images and the score distribution.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from raydetect.config import ModelConfig, ResourceConfig, to_dict
from raydetect.data import Source, class_name, done_ids, open_filesystem, read_output, read_source, rows_to_table
from raydetect.detector import Detector
from raydetect.errors import RaydetectError
from raydetect.features import FeatureStage
from raydetect.models import ConfiguredLoader, ImageClassifier, model_info

log = logging.getLogger(__name__)

AUDIT_COLUMNS = ("id", "path", "label", "pred", "pred_name", "conf", "score", "adversarial", "status", "error")


class AuditStage:
    """Loads the model once; explains each image, describes it and scores it with the detector.

    ``detector`` is a loaded (checksum-verified) :class:`Detector`; it travels to the actors as an
    object, so workers never read bundle files themselves.
    """

    def __init__(
        self, model_loader: Callable[[], ImageClassifier], detector: Detector, threads: int | None = None, batch_size: int = 16
    ) -> None:
        _, acfg, fcfg = detector.configs()
        self.features = FeatureStage(model_loader, acfg, fcfg, None, 0.0, threads, batch_size)
        self.detector = detector

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        table = self.features(batch).to_pylist()
        ok = [r for r in table if r["status"] == "ok"]
        scores = self.detector.predict_proba(np.stack([r["features"] for r in ok])) if ok else np.zeros(0)
        num_classes = self.features.model.num_classes
        rows = []
        it = iter(scores)
        for r in table:
            score = float(next(it)) if r["status"] == "ok" else float("nan")
            rows.append(
                {
                    "id": r["id"],
                    "path": r["path"],
                    "label": r["label"],
                    "pred": r["pred"],
                    "pred_name": class_name(r["pred"], num_classes) if r["pred"] >= 0 else "",
                    "conf": r["conf"],
                    "score": score,
                    "adversarial": bool(score > self.detector.threshold) if r["status"] == "ok" else False,
                    "status": r["status"],
                    "error": r["error"],
                }
            )
        return rows_to_table(rows)


def audit_dataset(ds: Any, model_loader: Callable[[], ImageClassifier], detector: Detector, plan: Any) -> Any:
    """Ray Data stage: image rows -> audit rows, on an actor pool sized by ``plan``."""
    from raydetect.pipeline import map_actors

    return map_actors(ds, AuditStage, (model_loader, detector, plan.threads, plan.batch_size), plan)


def load_detector_for(bundle: str, model: str | None = None, weights: str | None = None) -> tuple[Detector, ModelConfig]:
    """Load and verify a bundle; the model comes from the bundle (``model`` must agree if given)."""
    from raydetect.config import from_dict

    det = Detector.load(bundle)
    det.check_compatible(model)
    mcfg = from_dict(ModelConfig, det.model_config)
    if weights:
        mcfg = replace(mcfg, weights=weights, random_weights=False)
    return det, mcfg.validate()


def run_audit_job(
    source: Source,
    out: str,
    bundle: str,
    resources: ResourceConfig = ResourceConfig(),
    model: str | None = None,
    weights: str | None = None,
    top: int = 20,
    address: str | None = None,
) -> dict[str, Any]:
    """Audit every input of ``source`` with the bundle; write Parquet rows and the report under ``out``."""
    from raydetect.pipeline import ParquetSink, _count, init_ray, plan_resources

    start = time.perf_counter()
    det, mcfg = load_detector_for(bundle, model, weights)
    init_ray(address)
    plan = plan_resources(resources)
    mcfg = plan.model_config(mcfg)
    rows_dir = f"{out.rstrip('/')}/rows"
    done = done_ids(rows_dir, "id")
    ds = read_source(source, model_info(mcfg.name).preprocess, skip_ids=done)
    written = 0
    if ds is not None:
        log.info(
            "audit: %d actors x %d threads on %s, batch %d; %d inputs already done",
            plan.num_actors,
            plan.threads,
            plan.device,
            plan.batch_size,
            len(done),
        )
        sink = ParquetSink(rows_dir)
        audit_dataset(ds, ConfiguredLoader(mcfg), det, plan).write_datasink(sink)
        written = sink.rows_written
    inputs = len(done_ids(rows_dir, "id"))
    config = {
        "source": asdict(source),
        "bundle": bundle,
        "model": to_dict(mcfg),
        "plan": asdict(plan),
        "threshold": det.threshold,
    }
    summary = _count(rows_dir, "audit", start, inputs, len(done), written, config)
    report = write_audit_report(out, det, bundle, top)
    return {"summary": summary.to_dict(), "report": report}


# --------------------------------------------------------------------------------------------
# Report


def write_audit_report(out: str, det: Detector, bundle: str, top: int = 20) -> str:
    """Markdown + HTML report with a score histogram (PNG); returns the Markdown path."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydetect.report import markdown_table, pct

    table = read_output(f"{out.rstrip('/')}/rows")
    if table is None:
        raise RaydetectError(f"no audit rows under {out}")
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    flagged = [r for r in ok if r["adversarial"]]
    scores = np.array([r["score"] for r in ok])
    remote = "://" in out
    tmp = tempfile.TemporaryDirectory() if remote else None
    base = Path(tmp.name) if tmp else Path(out)
    base.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if len(scores):
        ax.hist(scores, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(
        det.threshold, color="#c44e52", linestyle="--", label=f"threshold {det.threshold:.3f} (target FPR {det.target_fpr:.0%})"
    )
    ax.set_xlabel("adversarial score")
    ax.set_ylabel("images")
    ax.set_yscale("symlog")
    ax.legend(loc="upper center")
    ax.set_title(f"{len(ok)} images scored, {len(flagged)} flagged")
    fig.tight_layout()
    fig.savefig(base / "score_histogram.png")
    plt.close(fig)

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
        [
            i + 1,
            f"`{r['path']}`",
            r["pred_name"] or r["pred"],
            f"{r['conf']:.3f}",
            f"{r['score']:.3f}",
            "yes" if r["adversarial"] else "no",
        ]
        for i, r in enumerate(suspicious)
    ]
    md = [
        "# raydetect audit",
        "",
        f"Detector `{bundle}` ({det.kind}, trained on {', '.join(det.trained_on)}; threshold {det.threshold:.4f} "
        f"for {det.target_fpr:.0%} false positives on clean validation images; "
        f"held-out ROC AUC {overall.get('auc', float('nan')):.3f}).",
        "",
        markdown_table(["", "count"], counts),
        "",
        "![score histogram](score_histogram.png)",
        "",
        f"## The {len(suspicious)} most suspicious images",
        "",
        markdown_table(["#", "path", "predicted", "confidence", "score", "flagged"], top_rows) if top_rows else "_none scored_",
        "",
    ]
    if reasons:
        md += [
            "## Inputs not scored",
            "",
            markdown_table(["reason", "count"], sorted(reasons.items(), key=lambda kv: -kv[1])),
            "",
        ]
    md += [
        "A flag means the image's explanation looks like those of the adversarial images the detector was trained on. "
        "It is evidence to inspect, not proof; attacks unlike the training attacks may go unflagged.",
        "",
    ]
    (base / "report.md").write_text("\n".join(md))

    def h_table(headers: list[str], body: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        rows_html = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c)).replace('`', '')}</td>" for c in row) + "</tr>" for row in body
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"

    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>raydetect audit</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>",
        "<h1>raydetect audit</h1>",
        f"<p>Detector <code>{html.escape(bundle)}</code> ({det.kind}); threshold {det.threshold:.4f}.</p>",
        h_table(["", "count"], counts),
        "<p><img src='score_histogram.png' alt='score histogram'></p>",
        f"<h2>The {len(suspicious)} most suspicious images</h2>",
        h_table(["#", "path", "predicted", "confidence", "score", "flagged"], top_rows),
    ]
    if reasons:
        page += ["<h2>Inputs not scored</h2>", h_table(["reason", "count"], [list(kv) for kv in reasons.items()])]
    page.append("</body></html>")
    (base / "report.html").write_text("\n".join(page))
    if tmp is None:
        return str(base / "report.md")
    fs, root = open_filesystem(out)  # object storage: upload the three files next to rows/
    for name in ("report.md", "report.html", "score_histogram.png"):
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write((base / name).read_bytes())
    tmp.cleanup()
    return f"{out.rstrip('/')}/report.md"
