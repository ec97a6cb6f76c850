"""The noise-stability peer on digits (issue 33): does it see what the explanation misses, minimal adversarials?

    python bench/noise.py [--jsonl bench/results/noise-digits.jsonl]

digits_cnn on sklearn's test digits: the correctly classified ones split into references (first 60,
unused here), training (next 200) and held-out (next 160) images; 8-bit BIM-10 at eps 0.1 and 0.3, and
BIM stopped at its first success at 0.3 (the minimal regime), each image's adversarial only where it
fools the model. Per design (the noise peer alone at three sigmas, the explanation alone, both in one
head) an LR fitted on the training rows of that attack, ROC AUC on the held-out rows. One line per
(design, attack). The sigma is not chosen here: every value is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMAND = "python bench/noise.py"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "noise-digits.jsonl")
    a = ap.parse_args()

    import numpy as np
    import torch

    from raydetect.attacks import make_attack, quantize
    from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig
    from raydetect.detect.features import Featurizer
    from raydetect.detect.fit import fit_head
    from raydetect.detect.metrics import roc_auc
    from raydetect.images import load_digits_images
    from raydetect.models import load_model

    model = load_model(ModelConfig(name="digits_cnn", device="cpu"))
    digits = load_digits_images("test")
    x, y = torch.from_numpy(digits.images), torch.from_numpy(digits.labels)
    with torch.no_grad():
        ok = np.flatnonzero((model(x).argmax(1) == y).numpy())
    train, held = ok[60:260], ok[260:420]
    attribution = AttributionConfig(n_steps=16)  # the default explanation (its views included)
    designs = {
        **{f"noise sigma {s:g}": FeatureConfig(peers=("noise",), explanation=False, noise_sigma=s) for s in (0.05, 0.1, 0.2)},
        "ig (default)": FeatureConfig(),
        "ig+noise sigma 0.1": FeatureConfig(peers=("noise",), noise_sigma=0.1),
    }
    attacks = {"bim-0.1": AttackConfig(eps=0.1, steps=10), "bim-0.3": AttackConfig(eps=0.3, steps=10),
               "bim-0.3-stop": AttackConfig(eps=0.3, steps=10, stop_margin=0.0)}  # fmt: skip
    lines = []
    for name, cfg in attacks.items():
        attack = make_attack(model, cfg)

        def pairs(idx: np.ndarray, attack=attack) -> tuple[torch.Tensor, torch.Tensor]:
            res = attack(x[idx], y[idx], keys=idx)
            return quantize(x[idx]), res.adversarial[res.success]

        tr, he = pairs(train), pairs(held)
        for design, fcfg in designs.items():
            fz = Featurizer(model, attribution, fcfg.validate())
            feats = lambda imgs, fz=fz: torch.cat([fz(imgs[i : i + 64]).features for i in range(0, len(imgs), 64)])  # noqa: E731
            X = torch.cat([feats(tr[0]), feats(tr[1])]).numpy()
            labels = np.r_[np.zeros(len(tr[0])), np.ones(len(tr[1]))].astype(np.int64)
            head = fit_head("lr", X, labels)
            Xh = torch.cat([feats(he[0]), feats(he[1])]).numpy()
            yh = np.r_[np.zeros(len(he[0])), np.ones(len(he[1]))]
            auc = roc_auc(yh, head.predict_proba(Xh))
            line = {"bench": "noise-digits", "command": COMMAND, "attack": name, "design": design, "auc": auc,
                    "held_clean": len(he[0]), "held_adversarial": len(he[1]), "train_adversarial": len(tr[1])}  # fmt: skip
            lines.append(line)
            print(json.dumps(line), flush=True)
    a.jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


def noise_markdown(rows: list[dict]) -> str:
    """STUDY.md: held-out ROC AUC per design (rows) and attack (columns)."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import num

    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    designs = list(dict.fromkeys(r["design"] for r in rows))
    auc = {(r["design"], r["attack"]): r["auc"] for r in rows}
    n = {r["attack"]: f"{r['attack']} ({r['held_adversarial']} adv.)" for r in rows}
    body = [[d, *(num(auc[(d, at)]) for at in attacks)] for d in designs]
    clean = rows[0]["held_clean"]
    return (f"```bash\n{COMMAND}\n```\n\nHeld-out ROC AUC ({clean} clean digits):\n\n"
            f"{markdown_table(['Design', *(n[at] for at in attacks)], body)}\n")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
