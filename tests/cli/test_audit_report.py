"""The audit report a person acts on, from `raydetect audit` on a folder of clean and adversarial
digits (plus broken files): thumbnails and heatmaps, the flagged table (sorted and filtered in a
real headless Chromium), counts per class, the detector's limits, and the rows as CSV."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from raydetect.cli import app
from raydetect.detect import Detector
from raydetect.report import Report
from raydetect.report.audit import quality_blocks
from raydetect.report.document import to_markdown
from tests.helpers import write_digit_folder

TOP = 6


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def audited(ray_cluster, digits_bundle, tmp_path_factory) -> tuple[Path, Path]:
    """(audited folder, audit output): 16 unseen digits and their BIM twins, exported as PNGs
    the way a user would, beside a few real and broken files."""
    base = tmp_path_factory.mktemp("audit-report")
    attack = ("attack", "digits", "--out", str(base / "attacks"), "--model", "digits_cnn", "--eps", "0.3", "--steps", "5",
              "--mode", "untargeted", "--strengths", "bim", "--offset", "200", "--limit", "16")  # fmt: skip
    assert run(*attack).exit_code == 0
    assert run("export", str(base / "attacks"), "--out", str(base / "imgs")).exit_code == 0
    write_digit_folder(base / "imgs" / "more", n=3)
    r = run("audit", str(base / "imgs"), "--detector", str(digits_bundle), "--out", str(base / "audit"), "--top", str(TOP))
    assert r.exit_code == 0, r.output
    return base / "imgs", base / "audit"


def test_rows_csv_has_one_row_per_input(audited) -> None:
    root, out = audited
    inputs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    with open(out / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["shown_path"] for r in rows) == inputs
    assert sorted(r["id"] for r in rows) == inputs  # folder ids are the paths under the root
    errors = [r for r in rows if r["status"] != "ok"]
    assert {r["shown_path"] for r in errors} == {f"more/{n}" for n in ("zero.png", "notes.jpg", "truncated.png", "tiny.png")}
    assert all(r["error"] for r in errors)
    scores = [float(r["score"]) for r in rows if r["status"] == "ok"]
    assert scores == sorted(scores, reverse=True)  # most suspicious first
    assert all(Path(r["path"]).is_absolute() for r in rows)


def test_report_shows_thumbnails_flagged_rows_classes_and_limits(audited) -> None:
    root, out = audited
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    # The N most suspicious images: thumbnail and heatmap each, embedded, read again by path.
    assert len(list((out / "thumbs").glob("*-image.png"))) == TOP and len(list((out / "thumbs").glob("*-map.png"))) == TOP
    gallery = re.findall(r"<figure class='rd-card'>(.*?)</figure>", page)
    assert len(gallery) == TOP and all(c.count("src='data:image/png;base64,") == 2 for c in gallery)
    assert "no thumbnail" not in page
    # Paths relative to the audited root, never the absolute location.
    with open(out / "rows.csv", newline="") as f:
        flagged = [r for r in csv.DictReader(f) if r["adversarial"] == "true"]
    assert len(flagged) >= 5, "the detector should flag most adversarial digits"
    table = page.split("id='rd-table-1'")[1].split("</table>")[0]
    assert table.count("<tr>") == len(flagged) + 1
    assert all(f"<code>{html.escape(r['shown_path'])}</code>" in table for r in flagged)
    assert str(root) not in table and str(root) not in "".join(gallery)
    assert "Flags per predicted class" in md and "id='rd-table-2'" in page
    # The detector's measured quality and limits; this bundle has no adaptive measurement.
    assert "measured quality and limits" in md and "bim-untargeted-0.3" in md and "No adaptive attack was measured" in md
    assert "Inputs not scored" in md and "rows.csv" in md
    # One file: nothing it shows is fetched from elsewhere.
    assert not re.search(r"<img src='(?!data:)", page) and not re.search(r"(src|href)=['\"]?https?:", page)


def test_the_report_opens_with_the_verdict_and_its_figures_are_in_results_and_summary(audited) -> None:
    _, out = audited
    with open(out / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    verdict = json.loads((out / "results.json").read_text())["verdict"]
    assert verdict["inputs"] == len(rows) and verdict["scored"] == sum(r["status"] == "ok" for r in rows)
    assert verdict["flagged"] == sum(r["adversarial"] == "true" for r in rows) and verdict["false_alarm_range"]
    first = (out / "report.md").read_text().splitlines()[2]  # after the title
    assert first.startswith(f"**Verdict: {verdict['headline']}.** {verdict['scored']} images scored, {verdict['flagged']} ")
    assert "Clean images alone would give about" in first
    with open(out / "summary.csv", newline="") as f:
        summary = {r["figure"]: r for r in csv.DictReader(f)}
    assert summary["flagged"]["value"] == str(verdict["flagged"]) and summary["verdict"]["value"] == verdict["headline"]
    assert [int(summary["expected_false_alarms"][k]) for k in ("low", "high")] == verdict["false_alarm_range"]
    # The bundle measured both of its attacks at its threshold: one estimate each.
    assert {e["family"] for e in verdict["estimates"]} == {"bim-untargeted-0.3", "bim-second-0.3"}


def test_images_inside_parquet_get_no_thumbnail_but_a_reason(ray_cluster, digits_bundle, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import digit_png

    (tmp_path / "in").mkdir()
    ids = [f"img-{i}" for i in range(4)]
    pq.write_table(pa.table({"id": ids, "image": [digit_png(300 + i) for i in range(4)]}), tmp_path / "in" / "part.parquet")
    r = run("audit", str(tmp_path / "in"), "--detector", str(digits_bundle), "--out", str(tmp_path / "o"), "--top", "2")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    assert md.count("no thumbnail: the image lives inside a Parquet file") == 2
    assert not (tmp_path / "o" / "thumbs").exists()
    with open(tmp_path / "o" / "rows.csv", newline="") as f:
        assert sorted(row["shown_path"] for row in csv.DictReader(f)) == [f"part.parquet: {i}" for i in ids]


def test_adaptive_measurements_in_the_bundle_are_reported(digits_bundle) -> None:
    det = Detector.load(digits_bundle)

    def limits(**metrics) -> str:
        return to_markdown(Report("q", quality_blocks(replace(det, metrics={**det.metrics, **metrics}), "b")))

    # What `reproduce --adaptive` records (detect.evaluation.robustness_rows), attackers who know the detector included.
    row = {"attack": "adaptive-untargeted-0.3", "method": "adaptive", "mode": "untargeted", "eps": 0.3, "n_attacked": 32,
           "n_success": 30, "n_clean": 32, "success_rate": 0.9375, "auc": 0.41, "tpr_at_1fpr": float("nan"),
           "tpr_at_5fpr": 0.1, "flagged": 0.05, "clean_fpr": 0.06, "evaded": 0.88, "passes": 812.0}  # fmt: skip
    md = limits(robustness=[row])
    assert "attackers who know it" in md and "adaptive-untargeted-0.3" in md and "white box" in md and "88.0%" in md
    assert "No adaptive attack" not in md
    # Only attacks that do not know the detector: still no adaptive figure.
    md = limits(robustness=[{**row, "attack": "pgd-untargeted-0.3", "method": "pgd"}])
    assert "pgd-untargeted-0.3" in md and "No adaptive attack was measured" in md
    # Any other record under "adaptive" is shown as it is.
    md = limits(adaptive={"bim-adaptive-0.3": {"n_pairs": 40, "auc": 0.61, "evasion_rate": 0.8}})
    assert "bim-adaptive-0.3" in md and "0.610" in md and "evasion_rate" in md and "No adaptive attack" not in md


def out_uri(out: Path) -> str:
    return (out / "report.html").as_uri()


def chromium_command(chromium: str, profile: Path, *args: str) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *args]  # fmt: skip


# Runs in the page once it has loaded: clicks the score header twice, filters, reports what it saw.
CHECK = """<script>
window.addEventListener('load', function () {
  function all(list) { return Array.prototype.slice.call(list); }
  var out = {};
  var imgs = all(document.querySelectorAll('.rd-card img'));
  out.thumbs = imgs.length;
  out.loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var t = document.getElementById('rd-table-1'), heads = all(t.querySelectorAll('thead th'));
  var names = heads.map(function (h) { return h.textContent.trim(); });
  var col = names.indexOf('score'), pathCol = names.indexOf('path');
  function scores() { return all(t.tBodies[0].rows).map(function (r) { return Number(r.cells[col].getAttribute('data-v')); }); }
  function paths() { return all(t.tBodies[0].rows).map(function (r) { return r.cells[pathCol].textContent.trim(); }); }
  out.before = scores();
  heads[pathCol].click(); out.paths = paths(); out.byPath = scores();
  heads[col].click(); out.asc = scores();
  heads[col].click(); out.desc = scores();
  var box = document.getElementById('rd-table-1-filter');
  out.query = t.tBodies[0].rows[0].cells[1].textContent.trim();
  box.value = out.query;
  box.dispatchEvent(new Event('input'));
  out.visible = all(t.tBodies[0].rows).filter(function (r) { return getComputedStyle(r).display !== 'none'; })
    .map(function (r) { return r.cells[1].textContent.trim(); });
  out.total = t.tBodies[0].rows.length;
  out.count = document.getElementById('rd-table-1-count').textContent;
  var pre = document.createElement('pre');
  pre.id = 'rd-test-result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_report_works_in_a_real_browser(audited, chromium, tmp_path) -> None:
    _, out = audited
    page = (out / "report.html").read_text()
    # Screenshot of the report as it opens from disk.
    shot = tmp_path / "report.png"
    args = chromium_command(chromium, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1200,1600", out_uri(out))
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), done.stderr[-2000:]
    img = PILImage.open(io.BytesIO(shot.read_bytes()))
    assert img.format == "PNG" and img.size == (1200, 1600)
    assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50  # drawn content, not a blank page

    # The same page with a check script: thumbnails load, sorting reorders, the filter hides rows.
    check = tmp_path / "check.html"
    check.write_text(page.replace("</body>", CHECK + "</body>"))
    done = subprocess.run(
        chromium_command(chromium, tmp_path / "p2", "--dump-dom", check.as_uri()), capture_output=True, text=True, timeout=180
    )
    found = re.search(r"<pre id=\"rd-test-result\">(.*?)</pre>", done.stdout, re.S)
    assert found, f"the check script did not run: {done.stderr[-2000:]}"
    res = json.loads(html.unescape(found.group(1)))
    assert res["thumbs"] == 2 * TOP and res["loaded"] == 2 * TOP
    before = res["before"]
    assert len(before) >= 5 and len(set(before)) > 1
    assert before == sorted(before, reverse=True)  # the report lists the highest score first
    # Sorting by path reorders the rows by path (and so out of score order) ...
    assert res["paths"] == sorted(res["paths"], key=str.lower)
    assert res["byPath"] not in (sorted(before), sorted(before, reverse=True))
    # ... then one click on score sorts ascending, a second descending.
    assert res["asc"] == sorted(before) and res["desc"] == sorted(before, reverse=True)
    assert res["visible"] == [res["query"]] and res["total"] == len(before)
    assert res["count"] == f"1 of {len(before)} rows"


def test_an_audit_without_a_detector_uses_the_shipped_one(ray_cluster, tmp_path, caplog) -> None:
    """`raydetect audit FOLDER --out OUT` on a fresh install: the shipped detector, said in one line, and
    a report that opens with the verdict."""
    import shutil

    from tests.conftest import imagenet_sample_or_skip

    root = imagenet_sample_or_skip()
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted(root.glob("*/*"))[364:367]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with caplog.at_level("WARNING"):
        r = run("audit", str(folder), "--out", str(tmp_path / "audit"))
    assert r.exit_code == 0, r.output
    said = r.output + "\n".join(caplog.messages)
    assert said.count("shipped default detector") == 1, said
    assert "unsigned" not in said and "RAYDETECT_SECRET is not set" not in said  # the one line says what matters
    first = (tmp_path / "audit" / "report.md").read_text().splitlines()[2]
    assert first.startswith("**Verdict: ")
    verdict = json.loads((tmp_path / "audit" / "results.json").read_text())["verdict"]
    assert verdict["inputs"] == 4 and verdict["scored"] == 3
    assert {e["family"] for e in verdict["estimates"]} >= {"bim-untargeted-4/255", "deepfool-untargeted-4/255"}
