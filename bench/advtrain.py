"""Detector adversarial training on digits, as ``raydetect train --adversarial-rounds`` runs it: does
fitting on the white-box attacker's own images hold up against a fresh white-box attack on the final
detector?

    python bench/advtrain.py [--rounds 2] [--round-steps 50] [--restarts 1] [--key public|secret]

Starts from the features of the default-design digits bundle that STUDY.md's digits rows evaluate
(``raydetect reproduce --model digits_cnn --data digits --limit 240 --eps 0.3 --protocol corrected
--detector lr --out runs/digits-eval/reproduce``: digits 0-239 of the test split) and trains on them
with ``stages.train.run_adversarial_training`` (what ``train --adversarial-rounds`` calls): the first
bundle as ``train`` fits it, then each round attacks those 240 digits with the adaptive attack
(``--round-steps`` steps) against the current bundle, adds the adversarials that fooled the model
and fits again. The first and the final bundle are then evaluated on the held-out digits 240-335 by
``EvaluateStage`` (what ``raydetect evaluate`` runs): BIM-10, early-stopped BIM and a *fresh*
adaptive attack, 100 steps, another seed, on that bundle. ``--key``: the auditor's key for the
views' draws (public: the attacker computes them; secret: a fixed study secret, the attacker
guesses, EOT 2). Appends one JSON line per (bundle, attack) to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydetect.attacks.suite import default_eot
from raydetect.config import AdversarialRounds, AttackConfig
from raydetect.detect import Detector
from raydetect.detect.evaluation import robustness_rows
from raydetect.explain.views import secret
from raydetect.images import LocalImages, load_digits_images
from raydetect.stages.evaluate import EvaluateStage
from raydetect.stages.train import run_adversarial_training

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ROOT / "runs" / "digits-eval" / "reproduce" / "corrected" / "features"
EPS = 0.3
HELD_OUT = (240, 96)  # (offset, count) in the digits test split, as STUDY.md's digits rows
SECRET = "advtrain-study: the auditor's secret"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def adaptive(steps: int, seed: int, det: Detector, restarts: int = 1) -> AttackConfig:
    """The white-box attack on ``det``; with restarts, a search over lam across them (``evaluate --restarts``)."""
    eot = default_eot(det.configs()[1].jitter)  # with the public key the attack takes one draw per step anyway
    return AttackConfig(method="adaptive", eps=EPS, steps=steps, eot=eot, smooth=10.0, seed=seed, restarts=restarts,
                        lam_search=restarts - 1)  # fmt: skip


def evaluate(det: Detector, model: Any, imgs: LocalImages, steps: int, restarts: int) -> list[dict[str, Any]]:
    """Summary rows (detect.evaluation) of the held-out digits ``imgs`` against ``det``, as ``evaluate`` makes them."""
    attacks = [
        AttackConfig(method="bim", eps=EPS, steps=10),
        AttackConfig(method="bim", eps=EPS, steps=40, alpha=EPS / 8, stop_margin=0.0),
        adaptive(steps, seed=7, det=det, restarts=restarts),
    ]
    stage = EvaluateStage(lambda: model, [det], attacks)
    n = len(imgs.ids)
    batch = {"id": np.array(imgs.ids), "label": imgs.labels, "status": np.full(n, "ok"), "error": np.full(n, ""),
             "image": imgs.images}  # fmt: skip
    return robustness_rows(stage(batch).to_pylist(), det.threshold)


def advtrain_markdown(records: list[dict[str, Any]]) -> str:
    """STUDY.md's table: per key, the first and the final detector against each attack (newest run of each;
    rows of ``train --adversarial-rounds`` apart from those of this script's earlier, own rounds)."""
    from raydetect.report.document import markdown_table

    latest = {(r.get("product", False), r["key"], r["round"], r.get("restarts", 1), r["attack"]): r for r in records}
    columns = {"BIM-10": lambda a: a == "bim-untargeted-0.3", "early-stopped BIM": lambda a: a == "bim-untargeted-0.3-stop",
               "fresh adaptive, 100 steps": lambda a: a.startswith("adaptive-")}  # fmt: skip
    body, commands = [], []
    for product, key, rnd, restarts in sorted({k[:4] for k in latest}, key=lambda k: (not k[0], *k[1:])):
        mine = {k[4]: r for k, r in latest.items() if k[:4] == (product, key, rnd, restarts)}
        rows = [next((r for a, r in mine.items() if match(a)), None) for match in columns.values()]
        first = next(r for r in rows if r is not None)
        commands.append(first["command"])
        label = "first bundle" if rnd == 0 else f"after {rnd} rounds ({first['round_steps']} steps each)"
        cells = [f"{r['auc']:.3f} / **{r['evaded']:.1%}**" if r else "not run" for r in rows]
        made = "`train --adversarial-rounds`" if product else "own rounds (6c00173)"
        body.append([made, key, label, restarts, f"{first['clean_fpr']:.1%}", *cells])
    head = ["rounds run by", "audit key", "detector", "adaptive restarts", "clean FPR",
            *(f"{a}: ROC AUC / evaded" for a in columns)]  # fmt: skip
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
    if not FEATURES.exists():
        raise SystemExit(f"no features at {FEATURES}: run the reproduce command in this file's docstring first")
    command = "python bench/advtrain.py " + shlex.join(sys.argv[1:])
    torch.set_num_threads(2)
    if args.key == "secret":  # before Ray starts: the feature jobs' actors draw with their own environment's key
        os.environ["RAYDETECT_SECRET"] = SECRET
    else:
        os.environ.pop("RAYDETECT_SECRET", None)
    out = ROOT / "runs" / "advtrain" / f"{args.key}-{args.rounds}x{args.round_steps}"  # the rounds resume here
    t0 = time.perf_counter()
    trained = run_adversarial_training(str(FEATURES), str(out), AdversarialRounds(args.rounds, args.round_steps),
                                       progress=log, kinds=("lr",), use_ray=False, n_boot=200)  # fmt: skip
    for r in trained.rounds:
        log(f"round {r['round']}: {r['fooled']} of {r['attacked']} fooled the model, {r['evaded']} passed the bundle "
            f"it attacked (threshold {r['threshold_before']:.4f})")  # fmt: skip
    log(f"trained in {time.perf_counter() - t0:.0f} s")
    first = Detector.load(str(out / "rounds" / "0" / "detector"))
    final = Detector.load(trained.bundle)
    held_out = load_digits_images("test", limit=HELD_OUT[1], offset=HELD_OUT[0])
    model = first.load_model("cpu")
    for r, d in ((0, first), (args.rounds, final)):
        d.views_key = secret()
        t0 = time.perf_counter()
        rows = evaluate(d, model, held_out, args.steps, args.restarts)
        log(f"bundle of round {r} evaluated in {time.perf_counter() - t0:.0f} s")
        with args.jsonl.open("a") as f:
            for row in rows:
                f.write(json.dumps({"command": command, "key": args.key, "round": r, "rounds": args.rounds,
                                    "round_steps": args.round_steps, "restarts": args.restarts, "product": True,
                                    **row}) + "\n")  # fmt: skip
                print(f"round {r} {row['attack']:36s} fools {row['success_rate']:6.1%}  AUC {row['auc']:.3f}  "
                      f"evaded {row['evaded']:6.1%}  clean FPR {row['clean_fpr']:.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
