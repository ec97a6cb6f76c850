"""Copy a trained bundle into the package as the shipped default detector, with how it was made and
its quality on held-back images (an `evaluate` run's results.json) in its manifest.

    python scripts/ship_detector.py BUNDLE EVAL_DIR DEST --command "the commands that made them"
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from raydetect.detect import Detector
from raydetect.store import read_output

RECHECK = 6  # held-back clean images whose scores the manifest records, for tests to recompute

KEEP = ("attack", "eps", "n_attacked", "n_success", "n_clean", "success_rate", "auc", "tpr_at_1fpr", "tpr_at_5fpr",
        "flagged", "evaded", "clean_fpr", "passes")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("evaluation", help="the output folder of `raydetect evaluate` on held-back images")
    p.add_argument("dest")
    p.add_argument("--command", required=True, help="the commands that made the bundle and its evaluation")
    p.add_argument("--held-back", required=True, help="which images were held back, e.g. 'sample files [300, 364)'")
    a = p.parse_args()
    det = Detector.load(a.bundle)
    rows = json.loads((Path(a.evaluation) / "results.json").read_text())["robustness"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    det.metrics["held_back"] = {
        "images": a.held_back,
        "clean_images": rows[0]["n_clean"] if rows else 0,
        "clean_flagged": rows[0]["clean_fpr"] if rows else None,
        "per_attack": [{k: r[k] for k in KEEP} for r in rows],
    }
    clean = sorted((r["id"], r["score"]) for r in read_output(str(Path(a.evaluation) / "rows")).to_pylist()
                   if r["kind"] == "clean" and r["status"] == "ok" and r["correct"])  # fmt: skip
    det.metrics["held_back"]["clean_scores"] = dict(clean[:RECHECK])
    det.metrics["robustness"] = rows  # the audit's verdict and limits read them (report.verdict.families)
    det.metrics["made_by"] = {"command": a.command, "commit": commit}
    det.trained_on = list(det.trained_on)
    print(det.save(a.dest))


if __name__ == "__main__":
    main()
