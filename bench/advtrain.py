"""Detector adversarial training on digits: does fitting on the white-box attacker's own images hold
up against a fresh white-box attack on the final detector?

    python bench/advtrain.py [--rounds 2] [--round-steps 50] [--key public|secret]

Starts from the default-design digits bundle that STUDY.md's digits rows evaluate (``raydetect
reproduce --model digits_cnn --data digits --limit 240 --eps 0.3 --protocol corrected --detector lr
--out runs/digits-eval/reproduce``: digits 0-239 of the test split) and its stored training
descriptors. Each round attacks the 240 fit digits with the adaptive attack (``--round-steps``
steps) against the current detector, adds the descriptors of the adversarials that fooled the
model (as the audit computes them: the auditor's keyed draws) to the training rows, and refits the
head and its cross-fitted threshold as ``train`` does. The first and the final detector are then
evaluated on the held-out digits 240-335 by ``EvaluateStage`` (what ``raydetect evaluate`` runs):
BIM-10, early-stopped BIM and a *fresh* adaptive attack, 100 steps, on that detector. ``--key``:
the auditor's key for the views' draws (public: the attacker computes them; secret: it guesses,
EOT 2). Appends one JSON line per (detector, attack) to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydetect.attacks.suite import default_eot
from raydetect.config import AttackConfig
from raydetect.detect import Detector
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.evaluation import robustness_rows
from raydetect.detect.fit import cross_fitted
from raydetect.explain.views import PUBLIC_KEY
from raydetect.images import LocalImages, load_digits_images
from raydetect.stages.attack import build_attacks
from raydetect.stages.evaluate import EvaluateStage
from raydetect.store import read_output

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "runs" / "digits-eval" / "reproduce" / "corrected"
EPS = 0.3
FIT, HELD_OUT = (0, 240), (240, 96)  # (offset, count) in the digits test split, as STUDY.md's digits rows
SECRET = b"advtrain-study: the auditor's secret"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def training_rows(base: Path, det: Detector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, pair ids) of the bundle's stored training descriptors, selected as ``train`` selects them."""
    return FeatureSet.from_table(read_output(str(base / "features"))).for_attacks(det.trained_on)


def refit(det: Detector, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Detector:
    """The head and threshold ``train`` would fit on these rows (crossfit calibration)."""
    head, cal = cross_fitted(det.kind, X, y, groups, det.target_fpr, params=det.params or None)
    return replace(det, head=head, threshold=cal.threshold, calibration=cal.to_dict())


def adaptive(steps: int, seed: int, det: Detector, restarts: int = 1) -> AttackConfig:
    """The white-box attack on ``det``; with restarts, a search over lam across them (``evaluate --restarts``)."""
    eot = 1 if det.views_key == PUBLIC_KEY else default_eot(det.configs()[1].jitter)
    return AttackConfig(method="adaptive", eps=EPS, steps=steps, eot=eot, smooth=10.0, seed=seed, restarts=restarts,
                        lam_search=restarts - 1)  # fmt: skip


def evaluate(det: Detector, model: Any, imgs: LocalImages, steps: int, restarts: int) -> list[dict[str, Any]]:
    """Summary rows (detect.evaluation) of the held-out digits ``imgs`` against ``det``, as ``evaluate`` makes them."""
    attacks = [
        AttackConfig(method="bim", eps=EPS, steps=10),
        AttackConfig(method="bim", eps=EPS, steps=40, alpha=EPS / 8, stop_margin=0.0),
        adaptive(steps, seed=7, det=det, restarts=restarts),
    ]
    stage = EvaluateStage(lambda: model, det, attacks)
    n = len(imgs.ids)
    batch = {"id": np.array(imgs.ids), "label": imgs.labels, "status": np.full(n, "ok"), "error": np.full(n, ""),
             "image": imgs.images}  # fmt: skip
    return robustness_rows(stage(batch).to_pylist(), det.threshold)


def advtrain_markdown(records: list[dict[str, Any]]) -> str:
    """STUDY.md's table: per key, the first and the final detector against each attack (newest run of each)."""
    from raydetect.report.document import markdown_table

    latest = {(r["key"], r["round"], r.get("restarts", 1), r["attack"]): r for r in records}
    columns = {"BIM-10": lambda a: a == "bim-untargeted-0.3", "early-stopped BIM": lambda a: a == "bim-untargeted-0.3-stop",
               "fresh adaptive, 100 steps": lambda a: a.startswith("adaptive-")}  # fmt: skip
    body, commands = [], []
    for key, rnd, restarts in sorted({k[:3] for k in latest}):
        mine = {k[3]: r for k, r in latest.items() if k[:3] == (key, rnd, restarts)}
        rows = [next((r for a, r in mine.items() if match(a)), None) for match in columns.values()]
        first = next(r for r in rows if r is not None)
        commands.append(first["command"])
        label = "as trained by `reproduce`" if rnd == 0 else f"after {rnd} rounds ({first['round_steps']} steps each)"
        cells = [f"{r['auc']:.3f} / **{r['evaded']:.1%}**" if r else "not run" for r in rows]
        body.append([key, label, restarts, f"{first['clean_fpr']:.1%}", *cells])
    head = ["audit key", "detector", "adaptive restarts", "clean FPR", *(f"{a}: ROC AUC / evaded" for a in columns)]
    runs = "; ".join(f"`{c}`" for c in dict.fromkeys(commands))
    return markdown_table(head, body) + f"\n\nRows: `bench/results/advtrain-digits.jsonl`; commands: {runs}.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--round-steps", type=int, default=50, help="adaptive steps of each round's training attack")
    ap.add_argument("--steps", type=int, default=100, help="adaptive steps of the evaluation's fresh attack")
    ap.add_argument("--restarts", type=int, default=1, help="restarts of the evaluation's fresh attack (lam search)")
    ap.add_argument("--key", choices=["public", "secret"], default="secret")
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "advtrain-digits.jsonl")
    args = ap.parse_args()
    if not BASE.exists():
        raise SystemExit(f"no bundle at {BASE}: run the reproduce command in this file's docstring first")
    command = "python bench/advtrain.py " + shlex.join(sys.argv[1:])
    torch.set_num_threads(2)
    det = Detector.load(str(BASE / "detector"))
    det.views_key = PUBLIC_KEY if args.key == "public" else SECRET
    model = det.load_model("cpu")
    X, y, groups = training_rows(BASE, det)
    fit = load_digits_images("test", limit=FIT[1], offset=FIT[0])
    x_fit, y_fit = torch.from_numpy(fit.images), torch.from_numpy(fit.labels)
    keys = np.arange(len(x_fit))
    detectors = [(0, det)]
    for r in range(args.rounds):
        t0 = time.perf_counter()
        ((_, attack),) = build_attacks(model, [adaptive(args.round_steps, seed=100 + r, det=det)], det)
        res = attack(x_fit, y_fit, keys=keys)
        ok = (res.success & res.correct).numpy()
        if not ok.any():
            raise SystemExit(f"round {r + 1}: the adaptive attack fooled the model on no fit digit")
        feats = det.scorer(model).run(res.adversarial[ok], keys[ok]).features.detach().cpu().numpy()  # IG needs grad
        X, y = np.concatenate([X, feats]), np.concatenate([y, np.ones(len(feats), int)])
        groups = np.concatenate([groups, np.asarray(fit.ids)[ok]])
        det = refit(det, X, y, groups)
        log(f"round {r + 1}: {int(ok.sum())} adaptive adversarials added ({time.perf_counter() - t0:.0f} s), "
            f"threshold {det.threshold:.4f}")  # fmt: skip
        detectors.append((r + 1, det))
    held_out = load_digits_images("test", limit=HELD_OUT[1], offset=HELD_OUT[0])
    for r, d in (detectors[0], detectors[-1]):
        t0 = time.perf_counter()
        rows = evaluate(d, model, held_out, args.steps, args.restarts)
        log(f"detector of round {r} evaluated in {time.perf_counter() - t0:.0f} s")
        with args.jsonl.open("a") as f:
            for row in rows:
                f.write(json.dumps({"command": command, "key": args.key, "round": r, "rounds": args.rounds,
                                    "round_steps": args.round_steps, "restarts": args.restarts, **row}) + "\n")  # fmt: skip
                print(f"round {r} {row['attack']:36s} fools {row['success_rate']:6.1%}  AUC {row['auc']:.3f}  "
                      f"evaded {row['evaded']:6.1%}  clean FPR {row['clean_fpr']:.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
