"""The audit report a person can act on, and the audit rows as CSV.

The report shows the most suspicious images (thumbnail and attribution heatmap), the whole
flagged list as a sortable, filterable table, counts per predicted class, the score histogram at
the threshold, and what the detector was measured to catch (and what it was not). The audit
actors keep no attribution maps: the few images the report shows are read and scored again here,
so a million-image audit stores no million maps. The rows themselves are read in bounded memory
(:func:`scan_audit`): counts and the shown rows are gathered bucket by bucket, and rows.csv is
merged from sorted runs on the local disk.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raydetect import registry
from raydetect.attacks import stable_key
from raydetect.detect import Detector
from raydetect.errors import RaydetectError
from raydetect.models import ImageClassifier
from raydetect.outputs import AUDIT_ROWS
from raydetect.report.document import Block, Cell, Gallery, Heading, Image, Paragraph, Report, Table, Thumb
from raydetect.report.figures import heatmap_thumbnail, reread_image, shown_path, thumbnail
from raydetect.report.tables import ROBUSTNESS_NOTE, calibration_rows, cross_fitted, interval, num, pct, robustness_table
from raydetect.report.verdict import Verdict, false_alarms, families, verdict
from raydetect.store import SCAN_ROWS, join, open_filesystem, scan_output, write_bytes

ROWS_CSV = "rows.csv"
SUMMARY_CSV = "summary.csv"  # the verdict's figures, beside rows.csv
TABLE_ROWS = 50_000  # flagged rows the HTML table holds (the browser stays usable); the CSV has all
RUN_BATCH = 512  # rows per record batch of a sorted run: the CSV merge holds one batch per run
HIST_EDGES = np.linspace(0, 1, 41)  # the score histogram's bins
CSV_COLUMNS = ["id", "shown_path", *AUDIT_ROWS.names[1:]]  # the audit rows, and where the report shows each image


def score_histogram(counts: np.ndarray, threshold: float, target_fpr: float, flagged: int) -> bytes:
    """PNG of the scored images' score histogram (``counts`` per bin of ``HIST_EDGES``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if counts.sum():
        ax.hist(HIST_EDGES[:-1], bins=HIST_EDGES, weights=counts, color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.3f} (target FPR {target_fpr:.0%})")
    ax.set_xlabel("adversarial score")
    ax.set_ylabel("images")
    ax.set_yscale("symlog")
    ax.legend(loc="upper center")
    ax.set_title(f"{int(counts.sum())} images scored, {flagged} flagged")
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
            f"On clean images like those it was calibrated on ({calibration_rows(cal)}), the threshold's "
            f"expected false-positive rate is {pct(cal['expected_fpr'])}, between {pct(lo)} and {pct(hi)} with 95% "
            "probability. "
        )
    return note + f"Bundle: {det.provenance or 'provenance not checked'}."


def _sort_key(row: dict[str, Any]) -> tuple[int, float, str]:
    """rows.csv's order in Python, as pyarrow sorts (score descending, NaN then null last; id)."""
    score = row["score"]
    rank = 2 if score is None else 1 if score != score else 0
    return rank, -score if rank == 0 else 0.0, row["id"]


@dataclass
class AuditRows:
    """What the report needs from every audit row, gathered in one pass in bounded memory: counts,
    at most ``top`` and ``TABLE_ROWS`` rows, and ``rows.csv`` written along the way."""

    csv_path: str
    inputs: int = 0
    scored: int = 0
    flagged: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why inputs were not scored -> count
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES) - 1, np.int64))  # scored images
    per_class: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (pred_name, pred) -> [scored, flagged]
    top: list[dict[str, Any]] = field(default_factory=list)  # the most suspicious scored rows
    flagged_rows: list[dict[str, Any]] = field(default_factory=list)  # the highest-scoring flagged rows


def _with_shown_path(table: Any, root: str) -> Any:
    import pyarrow as pa

    paths, ids = table.column("path").to_pylist(), table.column("id").to_pylist()
    shown = [shown_path(p, i, root) for p, i in zip(paths, ids, strict=True)]
    return table.append_column("shown_path", pa.array(shown, pa.string()))


def _best(held: list[dict[str, Any]], table: Any, n: int) -> list[dict[str, Any]]:
    """The ``n`` first rows of ``held`` and the (sorted) ``table`` together, in rows.csv order."""
    return sorted(held + table.slice(0, n).to_pylist(), key=_sort_key)[:n]


def scan_audit(out: str, root: str = "", top: int = 20, table_rows: int = TABLE_ROWS, max_rows: int = SCAN_ROWS) -> AuditRows:
    """Read every audit row under ``<out>/rows`` once (each id once, ``store.scan_output``), with
    ``shown_path`` (the input's path relative to the audited ``root``), and write ``<out>/rows.csv``:
    one row per input, errors included, most suspicious first.

    Memory is bounded by ``max_rows`` whatever the audit's size: rows come in buckets of at most
    that many, each sorted and spilled to a temporary run, and the runs are merged into the CSV.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    acc = AuditRows(csv_path=join(out, ROWS_CSV))
    with tempfile.TemporaryDirectory(prefix="raydetect-audit-") as spill:
        runs: list[str] = []
        for table in scan_output(join(out, "rows"), max_rows=max_rows):
            table = _with_shown_path(table, root).sort_by([("score", "descending"), ("id", "ascending")])
            is_ok = pc.equal(table.column("status"), "ok")
            ok = table.filter(is_ok)
            flagged = ok.filter(ok.column("adversarial"))
            acc.inputs += table.num_rows
            acc.scored += ok.num_rows
            acc.flagged += flagged.num_rows
            for r in table.filter(pc.invert(is_ok)).select(["status", "error"]).to_pylist():
                key = r["error"].split(":")[0] if r["status"] == "error" else r["status"]
                acc.reasons[key] = acc.reasons.get(key, 0) + 1
            acc.histogram += np.histogram(ok.column("score").to_numpy(), bins=HIST_EDGES)[0]
            if ok.num_rows:
                t = ok.select(["pred_name", "pred"]).append_column("flag", ok.column("adversarial").cast(pa.int64()))
                for r in t.group_by(["pred_name", "pred"]).aggregate([("flag", "count"), ("flag", "sum")]).to_pylist():
                    counts = acc.per_class.setdefault((r["pred_name"], r["pred"]), [0, 0])
                    counts[0] += r["flag_count"]
                    counts[1] += r["flag_sum"]
            acc.top = _best(acc.top, ok, top)
            shown = flagged.select(["id", "shown_path", "pred_name", "pred", "conf", "score"])
            acc.flagged_rows = _best(acc.flagged_rows, shown, table_rows)
            runs.append(f"{spill}/run-{len(runs)}.arrow")
            _write_run(table.select([c for c in CSV_COLUMNS if c in table.column_names]), runs[-1])
        if not runs:  # no part files at all
            raise RaydetectError(f"no audit rows under {out}")
        _merge_to_csv(runs, acc.csv_path)
    return acc


def _write_run(table: Any, path: str) -> None:
    import pyarrow as pa

    with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(table, max_chunksize=RUN_BATCH)


def _run_rows(path: str) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    with pa.OSFile(path, "rb") as f:  # read batch by batch, not mapped: memory holds one batch per run
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            yield from reader.get_batch(i).to_pylist()


def _merge_to_csv(runs: list[str], path: str, chunk: int = 8192) -> None:
    """Merge sorted runs (one per bucket) into one CSV, in rows.csv order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schemas = []
    for run in runs:
        with pa.OSFile(run, "rb") as f:
            schemas.append(pa.ipc.open_file(f).schema)
    schema = pa.unify_schemas(schemas, promote_options="default")
    fs, fpath = open_filesystem(path)
    with fs.open_output_stream(fpath) as sink, pacsv.CSVWriter(sink, schema) as writer:
        rows = heapq.merge(*(_run_rows(r) for r in runs), key=_sort_key) if len(runs) > 1 else _run_rows(runs[0])
        while batch := list(itertools.islice(rows, chunk)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


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
        maps = None if scored.explanation is None else scored.explanation.attributions.sum(1).cpu().numpy()
        again = scored.score.cpu().numpy()
        for j, i in enumerate(part):
            files[f"thumbs/{i + 1:03d}-image.png"] = thumbnail(images[i])
            if maps is not None:  # a peers-only detector explains nothing
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
    rows = []
    for name, ev in [("all trained attacks", m.get("overall", {})), *m.get("per_attack", {}).items()]:
        if ev:
            rows.append([name, ev.get("n_test_pairs", ""), f"{num(ev.get('auc'))} {interval(ev.get('auc_ci'))}",
                         pct(ev.get("tpr")), pct(ev.get("fpr")), pct(ev.get("tpr_at_1fpr"))])  # fmt: skip
    blocks: list[Block] = [
        Heading("The detector: measured quality and limits"),
        Paragraph(
            f"Bundle `{bundle}`: a {det.kind} detector on {det.reads()} of model "
            f"`{det.model_config.get('name', '?')}`. Trained on {len(det.trained_on)} attack(s) (method-mode-eps): "
            + ", ".join(f"`{a}`" for a in det.trained_on)
            + f". Threshold {det.threshold:.4f}, chosen to flag {pct(det.target_fpr, 0)} of clean images"
            + (" (out-of-fold scores of its training images)." if cross_fitted(det.calibration) else " (validation images).")
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
    knew = adaptive or any(isinstance(r, dict) and registry.knows_detector(str(r.get("method", ""))) for r in robust or [])
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


def audit_verdict(rows: AuditRows, det: Detector) -> Verdict:
    """The verdict on these audit rows, from the bundle's calibration and its per-attack detection rates."""
    return verdict(rows.inputs, rows.scored, rows.flagged, false_alarms(det.calibration, det.metrics), families(det.metrics))


def _n(v: int | float) -> str:
    return f"{v:,.0f}"


def verdict_blocks(v: Verdict) -> list[Block]:
    """The report's first lines: the verdict in plain words, then the estimate per measured attack."""
    counts = f"{_n(v.scored)} images scored, {_n(v.flagged)} flagged, {_n(v.errors)} not scored (errors)."
    head = f"**Verdict: {v.headline}.** {counts}"
    if v.false_alarm_range is None:
        return [Paragraph(head)]
    lo, hi = v.false_alarm_range
    where = "above" if v.evidence else "below" if v.flagged < lo else "inside"
    head += (
        f" Clean images alone would give about {_n(v.expected_false_alarms)} flags here (95% range {_n(lo)}-{_n(hi)}, "
        f"from {v.false_alarm_source}): {_n(v.flagged)} is {where} that range"
        + (" (these images may be unlike the clean images it was calibrated on)." if where == "below" else ".")
    )
    est, span = v.estimable, v.images_range
    if span is None:
        why = v.families_note or "no measured attack is flagged clearly more often than clean images are"
        how_many = f"How many adversarial images: no estimate ({why})."
    elif v.evidence:
        lowest, highest = min(est, key=lambda e: e.images), max(est, key=lambda e: e.images)
        how_many = (
            f"**Estimated adversarial images: {_n(span[0])} to {_n(span[1])} of the {_n(v.scored)} scored** (95%), "
            "if they are like the attacks measured for this detector"
        )
        how_many += (
            f": about {_n(lowest.images)} if like `{lowest.family}` (caught {pct(lowest.tpr, 0)} of the time) to about "
            f"{_n(highest.images)} if like `{highest.family}` (caught {pct(highest.tpr, 0)})."
            if lowest.images != highest.images
            else f": about {_n(lowest.images)} for each of the {len(est)} measured attacks."
            if len(est) > 1
            else f" (`{est[0].family}`, caught {pct(est[0].tpr, 0)} of the time)."
        )
    else:
        how_many = f"If it holds adversarial images like those measured for this detector: at most {_n(span[1])} (95%)."
    blocks: list[Block] = [Paragraph(head), Paragraph(how_many)]
    if v.estimates:
        table = []
        for e in v.estimates:
            found = (_n(e.images), f"{_n(e.images_range[0])}-{_n(e.images_range[1])}") if e.estimable else (
                "no estimate", "caught about as often as clean images are flagged")  # fmt: skip
            table.append([f"`{e.family}`", f"{pct(e.tpr)} ({e.detected}/{e.measured})", *found])
        blocks.append(Table(["if they are like", "caught when measured", "adversarial images", "95% interval"], table))
        blocks.append(
            Paragraph(
                "_The estimate covers only attacks like those measured, at their budgets, on images like the detector's "
                "own; attacks it does not catch (other methods, smaller budgets, attackers who know the detector) could be "
                "present in any number without adding flags._"
            )
        )
    return blocks


def summary_csv(v: Verdict) -> bytes:
    """The verdict's figures, one per row (``figure, value, low, high, detail``): rows.csv's companion."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["figure", "value", "low", "high", "detail"])
    for name in ("inputs", "scored", "flagged", "errors"):
        w.writerow([name, getattr(v, name), "", "", ""])
    w.writerow(["verdict", v.headline, "", "", ""])
    lo, hi = v.false_alarm_range or ("", "")
    exp = "" if math.isnan(v.expected_false_alarms) else round(v.expected_false_alarms, 1)
    w.writerow(["expected_false_alarms", exp, lo, hi, v.false_alarm_source])
    span = v.images_range
    note = f"range across {len(v.estimable)} measured attack(s)" if span else v.families_note or "no estimable attack"
    w.writerow(["adversarial_images", "", *(span or ("", "")), note])
    for e in v.estimates:
        caught = f"caught {e.detected}/{e.measured}"
        w.writerow([f"adversarial_images_if_like:{e.family}", *((e.images, *e.images_range) if e.estimable else ("", "", "")),
                    caught if e.estimable else f"{caught}: no estimate"])  # fmt: skip
    return buf.getvalue().encode()


def audit_report(
    out: str,
    det: Detector,
    bundle: str,
    top: int = 20,
    root: str = "",
    load_model: Callable[[], ImageClassifier] | None = None,
) -> tuple[Report, dict[str, Any]]:
    """The report of the audit rows under ``<out>/rows`` (which also go to ``<out>/rows.csv``, and
    the verdict's figures to ``<out>/summary.csv``), and its ``results.json`` record.

    ``root`` is the audited source (paths are shown relative to it); ``load_model`` loads the
    bundle's classifier for the thumbnails' heatmaps (None: no thumbnails).
    """
    rows = scan_audit(out, root, top)
    csv_path, n_ok, n_flagged = rows.csv_path, rows.scored, rows.flagged
    v = audit_verdict(rows, det)
    write_bytes(join(out, SUMMARY_CSV), summary_csv(v))
    results = {"bundle": bundle, "threshold": det.threshold, "target_fpr": det.target_fpr, "verdict": v.to_dict(),
               "rows_csv": csv_path, "summary_csv": join(out, SUMMARY_CSV)}  # fmt: skip
    report = Report("raydetect audit")
    report.add(*verdict_blocks(v))
    report.figures["score_histogram.png"] = score_histogram(rows.histogram, det.threshold, det.target_fpr, n_flagged)
    counts = [
        ["inputs", rows.inputs],
        ["scored", n_ok],
        ["flagged adversarial", f"{n_flagged} ({pct(n_flagged / n_ok) if n_ok else 'n/a'})"],
        ["not scored (errors)", rows.inputs - n_ok],
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

    top_rows = rows.top
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

    shown = rows.flagged_rows
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

    by_class = _per_class(rows.per_class)
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
    if rows.reasons:
        report.add(Heading("Inputs not scored"), Table(["reason", "count"], sorted(rows.reasons.items(), key=lambda kv: -kv[1])))
    report.add(*quality_blocks(det, bundle), Paragraph(bundle_note(det)))
    report.add(
        Heading("Files"),
        Paragraph(
            f"Every row (one per input, errors with their reason): `{join(out, 'rows')}` (Parquet) and `{csv_path}`; "
            f"the verdict's figures: `{join(out, SUMMARY_CSV)}` and `{join(out, 'results.json')}`."
        ),
        Paragraph(
            "A flag means the image's explanation looks like those of the adversarial images the detector was trained on. "
            "It is evidence to inspect, not proof; attacks unlike the training attacks may go unflagged."
        ),
    )
    return report, results


def _per_class(per_class: dict[tuple[str, int], list[int]]) -> list[list[Any]]:
    """[class, scored, flagged, flagged share] rows, most flagged first."""
    ordered = sorted(per_class.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0][0]))
    return [[name or str(pred), n, f, Cell(pct(f / n), f / n)] for (name, pred), (n, f) in ordered]
