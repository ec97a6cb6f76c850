"""The audit report a person can act on, and the audit rows as CSV.

The report shows the most suspicious images (thumbnail and attribution heatmap), the whole
flagged list as a sortable, filterable table, counts per predicted class, the score histogram at
the threshold, and what the detector was measured to catch (and what it was not). The audit
actors keep no attribution maps: the few images the report shows are read and scored again here,
so a million-image audit stores no million maps.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raydetect.attacks import stable_key
from raydetect.detect import Detector
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier
from raydetect.report.document import Block, Cell, Gallery, Heading, Image, Paragraph, Report, Table, Thumb
from raydetect.report.figures import heatmap_thumbnail, reread_image, shown_path, thumbnail
from raydetect.report.tables import ROBUSTNESS_NOTE, interval, num, pct, robustness_table
from raydetect.store import join, open_filesystem, read_output

ROWS_CSV = "rows.csv"
TABLE_ROWS = 50_000  # flagged rows the HTML table holds (the browser stays usable); the CSV has all
KNOWS_DETECTOR = ("adaptive", "squeeze_eot")  # attack methods that optimise against the detector
CSV_COLUMNS = ["id", "shown_path", "path", "label", "pred", "pred_name", "conf", "score", "adversarial", "status", "error"]


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


def audit_rows(out: str, root: str) -> Any:
    """Every audit row (pyarrow Table), most suspicious first, with ``shown_path``: the input's
    path relative to the audited ``root``."""
    import pyarrow as pa

    table = read_output(join(out, "rows"))
    if table is None:
        raise RaydetectError(f"no audit rows under {out}")
    paths, ids = table.column("path").to_pylist(), table.column("id").to_pylist()
    shown = [shown_path(p, i, root) for p, i in zip(paths, ids, strict=True)]
    table = table.append_column("shown_path", pa.array(shown, pa.string()))
    # NaN scores (inputs not scored) sort last.
    return table.sort_by([("score", "descending"), ("id", "ascending")])


def export_csv(table: Any, out: str) -> str:
    """``<out>/rows.csv``: one row per input (errors included), most suspicious first."""
    import pyarrow.csv as pacsv

    path = join(out, ROWS_CSV)
    fs, fpath = open_filesystem(path)
    with fs.open_output_stream(fpath) as f:
        pacsv.write_csv(table.select([c for c in CSV_COLUMNS if c in table.column_names]), f)
    return path


def _thumbs(rows: list[dict[str, Any]], det: Detector, load_model: Callable[[], ImageClassifier] | None,
            batch_size: int = 16) -> tuple[list[Thumb], dict[str, bytes]]:  # fmt: skip
    """Gallery cards of the most suspicious rows: each image read and scored again for its map."""
    files: dict[str, bytes] = {}
    notes: dict[int, str] = {}
    images: dict[int, np.ndarray] = {}
    model, why = None, "no model to explain it with"
    if rows and load_model is not None:
        try:
            model = load_model()
        except (RaydetectError, OSError) as exc:  # e.g. weights only the workers can read: the report goes on
            why = f"the model does not load here: {exc}"
    for i, r in enumerate(rows):
        try:
            if model is None:
                raise RaydetectError(why)
            images[i] = reread_image(r["path"], r["id"], model.info.preprocess)
        except RaydetectError as exc:
            notes[i] = f"no thumbnail: {exc}"
    idx = sorted(images)
    scorer = det.scorer(model) if model is not None and idx else None
    for start in range(0, len(idx) if scorer else 0, batch_size):
        part = idx[start : start + batch_size]
        x = torch.from_numpy(np.stack([images[i] for i in part]).astype(np.float32))
        scored = scorer.run(x, keys=np.array([stable_key(rows[i]["id"]) for i in part]))  # type: ignore[union-attr]
        maps = scored.explanation.attributions.sum(1).cpu().numpy()
        again = scored.score.cpu().numpy()
        for j, i in enumerate(part):
            files[f"thumbs/{i + 1:03d}-image.png"] = thumbnail(images[i])
            files[f"thumbs/{i + 1:03d}-map.png"] = heatmap_thumbnail(images[i], maps[j])
            if abs(float(again[j]) - rows[i]["score"]) > 0.01:
                notes[i] = f"scores {again[j]:.3f} when read again now: the file may have changed"
    cards = []
    for i, r in enumerate(rows):
        shown = [(f"thumbs/{i + 1:03d}-image.png", "image"), (f"thumbs/{i + 1:03d}-map.png", "attribution heatmap")]
        caption = [
            f"**#{i + 1}** `{r['shown_path']}`",
            f"predicted **{r['pred_name'] or r['pred']}** ({r['conf']:.1%})",
            f"score **{r['score']:.3f}**, {'flagged' if r['adversarial'] else 'not flagged'}",
        ]
        cards.append(Thumb([s for s in shown if s[0] in files], caption + ([f"_{notes[i]}_"] if i in notes else [])))
    return cards, files


def _generic_table(value: Any) -> Block:
    """Render measurements of unknown shape (dict of dicts, list of dicts, dict, value) as a table."""

    def show(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else "n/a"
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
            return interval(v)
        return v if isinstance(v, (int, str)) else str(v)

    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        keys = list(dict.fromkeys(k for v in value.values() for k in v))
        return Table(["", *keys], [[name, *(show(v.get(k, "")) for k in keys)] for name, v in value.items()])
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(dict.fromkeys(k for v in value for k in v))
        return Table(keys, [[show(v.get(k, "")) for k in keys] for v in value])
    if isinstance(value, dict):
        return Table(["", "value"], [[k, show(v)] for k, v in value.items()])
    return Paragraph(str(value))


def quality_blocks(det: Detector, bundle: str) -> list[Block]:
    """What the detector was measured to catch, at which cost, and what was never measured."""
    m = det.metrics
    attr = det.attribution
    rows = []
    for name, ev in [("all trained attacks", m.get("overall", {})), *m.get("per_attack", {}).items()]:
        if ev:
            rows.append([name, ev.get("n_test_pairs", ""), f"{num(ev.get('auc'))} {interval(ev.get('auc_ci'))}",
                         pct(ev.get("tpr")), pct(ev.get("fpr")), pct(ev.get("tpr_at_1fpr"))])  # fmt: skip
    blocks: list[Block] = [
        Heading("The detector: measured quality and limits"),
        Paragraph(
            f"Bundle `{bundle}`: a {det.kind} detector on `{attr.get('explainer', '?')}` attributions "
            f"(baseline `{attr.get('baseline', '?')}`, {attr.get('n_steps', '?')} steps) of model "
            f"`{det.model_config.get('name', '?')}`. Trained on {len(det.trained_on)} attack(s) (method-mode-eps): "
            + ", ".join(f"`{a}`" for a in det.trained_on)
            + f". Threshold {det.threshold:.4f}, chosen to flag {pct(det.target_fpr, 0)} of clean validation images."
        ),
        Table(["held-out test pairs of", "pairs", "ROC AUC [95% CI]", "flagged (TPR)", "clean flagged (FPR)", "TPR@1%FPR"], rows)
        if rows
        else Paragraph("_The bundle records no held-out measurements._"),
    ]
    # Measured by `reproduce --adaptive` (key "robustness"), or any other record under "adaptive".
    robust, adaptive = m.get("robustness"), m.get("adaptive")
    if robust:
        try:
            table: Block = robustness_table(robust)
        except (KeyError, TypeError):  # a record of another shape: show it as it is
            table = _generic_table(robust)
        blocks += [Heading("Against attacks it never trained on, and attackers who know it", 3), table, ROBUSTNESS_NOTE]
    if adaptive:
        blocks += [Heading("Against adaptive attacks (the attacker knows the detector)", 3), _generic_table(adaptive)]
    knew = adaptive or any(isinstance(r, dict) and r.get("method") in KNOWS_DETECTOR for r in robust or [])
    if not knew:
        blocks.append(
            Paragraph(
                "**No adaptive attack was measured for this bundle**: an attacker who knows the detector and optimises "
                "against it was not tried, so these figures say nothing about such an attacker."
            )
        )
    blocks.append(
        Paragraph(
            "Measured only on the attacks above, at their eps, on held-out images like the training ones. Other attack "
            "methods, other budgets and images unlike the training set were not measured and may go unflagged; about "
            f"{pct(det.target_fpr, 0)} of clean images are flagged by design."
        )
    )
    return blocks


def audit_report(
    out: str,
    det: Detector,
    bundle: str,
    top: int = 20,
    root: str = "",
    load_model: Callable[[], ImageClassifier] | None = None,
) -> Report:
    """The report of the audit rows under ``<out>/rows`` (which also go to ``<out>/rows.csv``).

    ``root`` is the audited source (paths are shown relative to it); ``load_model`` loads the
    bundle's classifier for the thumbnails' heatmaps (None: no thumbnails).
    """
    import pyarrow.compute as pc

    table = audit_rows(out, root)
    csv_path = export_csv(table, out)
    is_ok = pc.equal(table.column("status"), "ok")
    ok = table.filter(is_ok)
    flagged = ok.filter(ok.column("adversarial"))
    n_ok, n_flagged = ok.num_rows, flagged.num_rows
    reasons: dict[str, int] = {}
    for r in table.filter(pc.invert(is_ok)).select(["status", "error"]).to_pylist():
        key = r["error"].split(":")[0] if r["status"] == "error" else r["status"]
        reasons[key] = reasons.get(key, 0) + 1

    report = Report("raydetect audit")
    report.figures["score_histogram.png"] = score_histogram(
        ok.column("score").to_numpy(), det.threshold, det.target_fpr, n_flagged
    )
    counts = [
        ["inputs", table.num_rows],
        ["scored", n_ok],
        ["flagged adversarial", f"{n_flagged} ({pct(n_flagged / n_ok) if n_ok else 'n/a'})"],
        ["not scored (errors)", table.num_rows - n_ok],
    ]
    overall = det.metrics.get("overall", {})
    report.add(
        Paragraph(
            f"Audited `{root or '?'}` with detector `{bundle}` ({det.kind}; held-out ROC AUC "
            f"{num(overall.get('auc'))}, threshold {det.threshold:.4f}). Paths are shown relative to the audited root."
        ),
        Table(["", "count"], counts),
        Image("score_histogram.png", "score histogram"),
    )

    top_rows = ok.slice(0, top).to_pylist()
    cards, thumbs = _thumbs(top_rows, det, load_model)
    report.figures.update(thumbs)
    report.add(Heading(f"The {len(top_rows)} most suspicious images"))
    report.add(
        Paragraph(
            "Each image beside its attribution map (captum's blended heat map: red pushes towards the predicted "
            "class, blue against it), read and explained again for this report."
        ),
        Gallery(cards) if cards else Paragraph("_none scored_"),
    )

    shown = flagged.slice(0, TABLE_ROWS).select(["shown_path", "pred_name", "pred", "conf", "score"]).to_pylist()
    report.add(Heading(f"All {n_flagged} flagged images"))
    if n_flagged > len(shown):
        report.add(Paragraph(f"_The table holds the {len(shown)} highest scores; `{csv_path}` has every row._"))
    report.add(
        Table(
            ["#", "path", "predicted", "confidence", "score"],
            [
                [i + 1, f"`{r['shown_path']}`", r["pred_name"] or str(r["pred"]), Cell(pct(r["conf"]), r["conf"]), r["score"]]
                for i, r in enumerate(shown)
            ],
            interactive=True,
            markdown_limit=50,
            more=f"every row is in `{csv_path}`",
        )
        if shown
        else Paragraph("_none flagged_")
    )

    by_class = _per_class(ok)
    report.add(
        Heading("Flags per predicted class"),
        Table(
            ["predicted class", "scored", "flagged", "flagged share"],
            by_class,
            interactive=True,
            markdown_limit=30,
            more="sort and filter them in report.html",
        )
        if by_class
        else Paragraph("_none scored_"),
    )
    if reasons:
        report.add(Heading("Inputs not scored"), Table(["reason", "count"], sorted(reasons.items(), key=lambda kv: -kv[1])))
    report.add(*quality_blocks(det, bundle))
    report.add(
        Heading("Files"),
        Paragraph(f"Every row (one per input, errors with their reason): `{join(out, 'rows')}` (Parquet) and `{csv_path}`."),
        Paragraph(
            "A flag means the image's explanation looks like those of the adversarial images the detector was trained on. "
            "It is evidence to inspect, not proof; attacks unlike the training attacks may go unflagged."
        ),
    )
    return report


def _per_class(ok: Any) -> list[list[Any]]:
    """[class, scored, flagged, flagged share] rows, most flagged first."""
    import pyarrow as pa

    if ok.num_rows == 0:
        return []
    t = ok.select(["pred_name", "pred"]).append_column("flag", ok.column("adversarial").cast(pa.int64()))
    agg = t.group_by(["pred_name", "pred"]).aggregate([("flag", "count"), ("flag", "sum")]).to_pylist()
    rows = sorted(agg, key=lambda r: (-r["flag_sum"], -r["flag_count"], r["pred_name"]))
    return [[r["pred_name"] or str(r["pred"]), r["flag_count"], r["flag_sum"], Cell(pct(r["flag_sum"] / r["flag_count"]),
             r["flag_sum"] / r["flag_count"])] for r in rows]  # fmt: skip
