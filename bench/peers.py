"""The field's reference detectors beside raydetect's, on the same images and attacks (issue 34).

    python bench/peers.py record [--jsonl bench/results/peers-compare.jsonl]
    python bench/peers.py record-digits   # after scripts/compare_peers_digits.sh
    python bench/peers.py record-combo    # the combination beside the default (scripts/compare_peers.sh)
    python bench/peers.py record-noise    # the noise peer, alone and joined to IG (scripts/noise_study.sh)
    python bench/peers.py cost [--images 16 --repeats 3]   # seconds per scored image of each detector
    python bench/peers.py promise BUNDLE [--offset 300 --limit 200]   # its false-alarm promise on unseen files

Reads the rows of the two ``raydetect evaluate`` runs of ``scripts/compare_peers.sh`` (the shipped default
and the three peers with ``--compare``; the explanation + feature squeezing combination alone, whose blind attacks
are the same keyed adversarials of the same images) and writes, per
detector and attack, the robustness summary (``detect.evaluation.robustness_rows``) on all 200
held-out files and on each half: ``selection`` (files 300-399 of the sample, sorted by path) and
``confirmation`` (400-499). Every detector was trained on files 0-299; the combination's peer was
chosen on selection rows of attacks that are not held out, so the confirmation half chose nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMAND = "bash scripts/compare_peers.sh && python bench/peers.py record"
RUNS = ("runs/peers/compare",)  # the comparison's evaluate output (the combination's: record-combo)
HALF = 100  # files 300-399 select, 400-499 confirm


def record(jsonl: Path) -> int:
    from raydetect.detect import Detector
    from raydetect.detect.evaluation import robustness_rows
    from raydetect.stages.evaluate import detector_labels
    from raydetect.store import read_output

    lines: list[dict[str, Any]] = []
    # The halves by the 200 held-out files' order (the comparison run holds them all; the combination ran on one).
    images = sorted({r["pair_id"] for r in read_output(str(ROOT / RUNS[0] / "rows"), columns=["pair_id"]).to_pylist()})
    half = {i: ("selection" if k < HALF else "confirmation") for k, i in enumerate(images)}
    for run in RUNS:
        # Not de-duplicated on id: the comparison run's rows predate ids unique per detector (their id repeats
        # across detectors); (id, detector) is unique, and Ray wrote each block once (checked below).
        table = read_output(str(ROOT / run / "rows"), dedupe_on=None)
        if table is None:
            print(f"peers: no rows under {run} yet; skipped")
            continue
        rows = table.to_pylist()
        keys = [(r["id"].split("@")[0], r.get("detector")) for r in rows]
        assert len(set(keys)) == len(keys), f"{run}: a row written twice"
        job = json.loads((ROOT / run / "rows" / "_job.json").read_text())["config"]
        bundles = [job["bundle"], *job.get("compare", [])]
        dets = [Detector.load(ROOT / b) for b in bundles]
        for label, bundle, det in zip(detector_labels(dets), bundles, dets, strict=True):
            mine = [r for r in rows if r.get("detector", label) == label]
            parts = sorted({half[r["pair_id"]] for r in mine})
            for part in ["all", *parts] if len(parts) > 1 else parts:  # a run on one half: that half alone
                sel = [r for r in mine if part == "all" or half[r["pair_id"]] == part]
                for r in robustness_rows(sel, det.threshold):
                    lines.append({"command": COMMAND, "images": part, "detector": label, "bundle": bundle,
                                  "audit_passes": det.audit_passes(), **r})  # fmt: skip
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"peers: {len(lines)} rows -> {jsonl}")
    return 0


def _pivot(rows: list[dict[str, Any]], cell: Any) -> tuple[list[str], list[list[str]]]:
    """Attack by detector: one line per attack (docs order), one column per detector."""
    from raydetect.report.tables import attack_rank, knows

    dets = list(dict.fromkeys(r["detector"] for r in rows))
    by = {(r["detector"], r["attack"]): r for r in rows}
    firsts = sorted({r["attack"]: r for r in rows}.values(), key=attack_rank)
    body = [
        [r["attack"], knows(r), *(cell(by[(d, r["attack"])]) if (d, r["attack"]) in by else "" for d in dets)] for r in firsts
    ]
    passes = {d: next(r["audit_passes"] for r in rows if r["detector"] == d) for d in dets}
    shown = {"ig": "raydetect default (ig)"}
    return ["Attack", "Knows the detector?", *(f"{shown.get(d, d)} ({passes[d]} passes)" for d in dets)], body


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """README: every detector on all 200 held-out files (TPR at 1% and 5% FPR, evaded), then the combination
    beside the default on the confirmation half."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import pct

    def cell(r: dict[str, Any]) -> str:
        return f"{pct(r['tpr_at_1fpr'], 0)} / {pct(r['tpr_at_5fpr'], 0)} / **{pct(r['evaded'], 0)}**"

    pooled = [r for r in rows if r["images"] == "all"]
    h1, b1 = _pivot(pooled, cell)
    n_clean = pooled[0]["n_clean"]
    return (
        f"```bash\n{rows[0]['command']}\n```\n\n"
        f"Each cell: TPR at 1% FPR / TPR at 5% FPR / **evaded** at the bundle's own threshold ({n_clean} clean images):\n\n"
        f"{markdown_table(h1, b1)}\n"
    )


COMBO_RUN = "runs/peers/ig-squeeze/confirm"  # evaluate of the combination --compare the default, files 400-449
COMBO_COMMAND = ("bash scripts/compare_peers.sh && python bench/peers.py record-combo  # the combination's evaluate: "
                 "files 400-449, the combination --compare the shipped default")  # fmt: skip


def record_combo(jsonl: Path) -> int:
    """The combination (explanation + feature squeezing in one head) beside the shipped default, scored on the
    same attacks of the same confirmation-half images in one ``evaluate --compare`` run."""
    run = json.loads((ROOT / COMBO_RUN / "results.json").read_text())
    lines = [{"command": COMBO_COMMAND, "images": "confirmation (files 400-449)", **r} for r in run["robustness"]]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"peers: {len(lines)} rows -> {jsonl}")
    return 0


def combo_markdown(rows: list[dict[str, Any]]) -> str:
    """The combination beside the default: ROC AUC / TPR at 1% / at 5% FPR / evaded, per attack."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import pct

    def cell(r: dict[str, Any]) -> str:
        return f"{num(r['auc'])} / {pct(r['tpr_at_1fpr'], 0)} / {pct(r['tpr_at_5fpr'], 0)} / **{pct(r['evaded'], 0)}**"

    h, b = _pivot(rows, cell)
    return (
        f"```bash\n{rows[0]['command']}\n```\n\n"
        f"{rows[0]['images']}, {rows[0]['n_clean']} clean images; each cell ROC AUC / TPR at 1% FPR / TPR at 5% FPR / "
        f"**evaded** at the bundle's own threshold:\n\n{markdown_table(h, b)}\n"
    )


NOISE_RUNS = {  # one evaluate per half (scripts/noise_study.sh)
    "selection (files 300-349)": "runs/peers/ig-noise/select",
    "confirmation (files 400-449)": "runs/peers/ig-noise/confirm",
}
NOISE_COMMAND = "bash scripts/noise_study.sh && python bench/peers.py record-noise"
# The rule scripts/noise_study.sh fixed before any row was read: the attacks that choose (not held out).
CHOOSING = ("bim-untargeted-4/255", "pgd-untargeted-4/255", "bim-untargeted-4/255-stop", "deepfool-untargeted-4/255")


def record_noise(jsonl: Path) -> int:
    """The noise-stability peer alone and joined to the explanation's descriptor, beside the shipped default:
    one ``evaluate --compare`` run per half (the same keyed adversarials of the same images for all three)."""
    lines = []
    for images, run in NOISE_RUNS.items():
        path = ROOT / run / "results.json"
        if not path.exists():
            print(f"peers: no results under {run} yet; skipped")
            continue
        lines += [{"command": NOISE_COMMAND, "images": images, **r} for r in json.loads(path.read_text())["robustness"]]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"peers: {len(lines)} rows -> {jsonl}")
    return 0


def noise_markdown(rows: list[dict[str, Any]]) -> str:
    """Per half: ROC AUC / TPR at 5% FPR / evaded per attack and detector, then the fixed rule's score on the
    selection half (mean TPR at 5% FPR over the attacks that choose)."""
    from statistics import mean

    from raydetect.report.document import markdown_table
    from raydetect.report.tables import pct

    def cell(r: dict[str, Any]) -> str:
        return f"{num(r['auc'])} / {pct(r['tpr_at_5fpr'], 0)} / **{pct(r['evaded'], 0)}**"

    out = [f"```bash\n{rows[0]['command']}\n```\n"]
    for images in dict.fromkeys(r["images"] for r in rows):
        half = [r for r in rows if r["images"] == images]
        h, b = _pivot(half, cell)
        choose = {d: mean(r["tpr_at_5fpr"] for r in half if r["detector"] == d and r["attack"] in CHOOSING)
                  for d in dict.fromkeys(r["detector"] for r in half)}  # fmt: skip
        rule = ", ".join(f"{d} {pct(v, 1)}" for d, v in choose.items())
        n = half[0]["n_clean"]
        fp = {r["detector"]: round(r["clean_fpr"] * n) for r in half}
        flagged = ", ".join(f"{d} {k}/{n}" for d, k in fp.items())
        out.append(f"{images}, {n} clean images (flagged at each bundle's threshold: {flagged}); each cell ROC AUC / "
                   f"TPR at 5% FPR / **evaded** at the bundle's own threshold; mean TPR at 5% FPR over the choosing "
                   f"attacks: {rule}\n\n{markdown_table(h, b)}\n")  # fmt: skip
    return "\n".join(out)


def num(v: float) -> str:
    from raydetect.report.tables import num as fmt

    return fmt(v)


def full_markdown(rows: list[dict[str, Any]]) -> str:
    """STUDY.md: every row (detector, attack, half) as the comparison table shows it."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import comparison_table

    files = {"all": "files 300-499", "selection": "files 300-399", "confirmation": "files 400-499"}
    out = [f"```bash\n{rows[0]['command']}\n```\n"]
    for part, what in files.items():
        t = comparison_table([r for r in rows if r["images"] == part])
        out.append(f"**{part}** ({what}):\n\n{markdown_table(t.headers, t.rows)}\n")
    return "\n".join(out)


DIGITS_COMMAND = "bash scripts/compare_peers_digits.sh && python bench/peers.py record-digits"


def record_digits(jsonl: Path) -> int:
    """The digits comparison (attackers who know each detector included) as ``evaluate --compare`` summarised it."""
    run = json.loads((ROOT / "runs" / "peers-digits" / "compare" / "results.json").read_text())
    lines = [{"command": DIGITS_COMMAND, "images": "all", "views_key": run.get("views_key", ""), **r} for r in run["robustness"]]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"peers: {len(lines)} rows -> {jsonl}")
    return 0


def digits_markdown(rows: list[dict[str, Any]]) -> str:
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import comparison_table

    t = comparison_table(rows)
    return f"```bash\n{rows[0]['command']}\n```\n\n{markdown_table(t.headers, t.rows)}\n"


def promise(bundle: str, jsonl: Path, offset: int, limit: int) -> int:
    """Does a bundle's false-alarm promise hold? Flag the correctly classified clean files [offset, offset+limit) of
    the sample (which it never saw) and compare with its calibration's stated range (``train --target-fpr``)."""
    import torch

    from raydetect.detect import Detector
    from raydetect.detect.metrics import Calibration
    from raydetect.images import load_image_folder

    det = Detector.load(ROOT / bundle)
    model = det.load_model("cpu")
    data = load_image_folder(str(ROOT.parent / "shared" / "data" / "imagenet-sample"), model.info.preprocess,
                             offset=offset, limit=limit)  # fmt: skip
    x = torch.from_numpy(data.images)
    with torch.no_grad():
        ok = model(x).argmax(1).numpy() == data.labels
    scores = det.score(x[ok], model=model)
    cal = Calibration.from_dict(det.calibration)
    flagged = int((scores > det.threshold).sum())
    lo, hi = cal.flagged_range(len(scores), 0.95)
    line = {"bench": "promise", "bundle": bundle, "target_fpr": det.target_fpr, "files": [offset, offset + limit],
            "clean": len(scores), "flagged": flagged, "fpr": flagged / len(scores),
            "promised_range": det.calibration.get("fpr_range"),
            "flagged_range_95": [lo, hi], "holds": bool(lo <= flagged <= hi),
            "command": f"python bench/peers.py promise {bundle} --offset {offset} --limit {limit}"}  # fmt: skip
    with jsonl.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))
    return 0


COST_DESIGNS = {  # name -> (FeatureConfig fields, needs references)
    "ig (default)": {},
    "squeeze": {"peers": ("squeeze",), "explanation": False},
    "lid": {"peers": ("lid",), "explanation": False},
    "mahalanobis": {"peers": ("mahalanobis",), "explanation": False},
    "ig+squeeze": {"peers": ("squeeze",)},
}


def cost(jsonl: Path, images: int, repeats: int) -> int:
    """Seconds per scored image of each detector's features on this machine, in one process, interleaved
    repeats (efficientnet_lite0, 224 px, CPU); appends one line per (design, repeat)."""
    import platform
    import time

    import torch

    from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig
    from raydetect.detect.features import Featurizer
    from raydetect.images import load_image_folder
    from raydetect.models import load_model

    data = ROOT.parent / "shared" / "data" / "imagenet-sample"
    model = load_model(ModelConfig(name="efficientnet_lite0", device="cpu"))
    x = torch.from_numpy(load_image_folder(str(data), model.info.preprocess, limit=images + 100).images)
    refs, batch = x[:100], x[100 : 100 + images]
    built = {n: Featurizer(model, AttributionConfig(), FeatureConfig(**f), refs) for n, f in COST_DESIGNS.items()}
    with jsonl.open("a") as out:
        for rep in range(repeats):
            for name, fz in built.items():
                start = time.perf_counter()
                fz(batch)
                sec = (time.perf_counter() - start) / len(batch)
                line = {"bench": "peer-cost", "design": name, "repeat": rep, "s_per_image": sec, "images": len(batch),
                        "passes": fz.audit_passes, "threads": torch.get_num_threads(), "machine": platform.node()}  # fmt: skip
                out.write(json.dumps(line) + "\n")
                print(f"{name}: {sec:.3f} s/image ({fz.audit_passes} passes)")
    return 0


def cost_markdown(rows: list[dict[str, Any]]) -> str:
    from statistics import median

    from raydetect.report.document import markdown_table

    names = list(dict.fromkeys(r["design"] for r in rows))
    base = median(r["s_per_image"] for r in rows if r["design"] == names[0])
    body = []
    for n in names:
        s = [r["s_per_image"] for r in rows if r["design"] == n]
        passes = next(r["passes"] for r in rows if r["design"] == n)
        body.append([n, str(passes), f"{median(s):.3f}", f"{min(s):.3f}-{max(s):.3f}", f"{median(s) / base:.2f}"])
    heads = ["Detector features", "Passes/image", "s/image (median)", "range", "x the default"]
    return f"```bash\npython bench/peers.py cost\n```\n\n{markdown_table(heads, body)}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["record", "record-digits", "record-combo", "record-noise", "cost", "promise"])
    ap.add_argument("bundle", nargs="?", help="promise: the bundle to check")
    ap.add_argument("--offset", type=int, default=300)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--jsonl", type=Path, default=None)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.cmd == "record-combo":
        return record_combo(a.jsonl or ROOT / "bench" / "results" / "peers-combo.jsonl")
    if a.cmd == "record-noise":
        return record_noise(a.jsonl or ROOT / "bench" / "results" / "peers-noise.jsonl")
    if a.cmd == "record-digits":
        return record_digits(a.jsonl or ROOT / "bench" / "results" / "peers-digits.jsonl")
    if a.cmd == "promise":
        return promise(a.bundle, a.jsonl or ROOT / "bench" / "results" / "promise.jsonl", a.offset, a.limit)
    if a.cmd == "cost":
        return cost(a.jsonl or ROOT / "bench" / "results" / "peer-cost.jsonl", a.images, a.repeats)
    return record(a.jsonl or ROOT / "bench" / "results" / "peers-compare.jsonl")


if __name__ == "__main__":
    raise SystemExit(main())
