"""Robustness figures of a detector: per attack, how often it fools the model and how often it is caught.

Computed from rows of clean and adversarial images scored by the detector itself (the
evaluation job): ROC AUC and TPR at fixed FPR compare the attack's successful adversarials with
the clean images of the same set; "evaded" is the share of attacked images that fool the model
*and* pass the detector at the bundle's own threshold, what an attacker who plants images gets;
"evaded at 1% FPR" the same at the threshold that flags 1% of *these* clean images (their 99th
percentile: an auditor's stricter operating point, defined from 100 clean images on).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raydetect.detect.metrics import roc_auc, tpr_at_fpr


def robustness_rows(rows: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """One summary per attack from evaluation rows (see ``stages.evaluate``)."""
    clean = np.array([r["score"] for r in rows if r["kind"] == "clean" and r["status"] == "ok" and r["correct"]])
    strict = float(np.quantile(clean, 0.99, method="higher")) if len(clean) >= 100 else float("nan")
    out = []
    for name in sorted({r["attack"] for r in rows if r["kind"] == "adversarial"}):
        adv = [r for r in rows if r["attack"] == name and r["kind"] == "adversarial"]
        ok = np.array([r["success"] for r in adv], bool)
        s = np.array([r["score"] for r in adv])[ok]
        y, scores = np.r_[np.zeros(len(clean)), np.ones(len(s))], np.r_[clean, s]
        out.append(
            {
                "attack": name, "method": adv[0]["method"], "mode": adv[0]["mode"], "eps": adv[0]["eps"],
                "n_attacked": len(adv), "n_success": int(ok.sum()), "n_clean": len(clean),
                "success_rate": float(ok.mean()) if len(adv) else float("nan"),
                "auc": roc_auc(y, scores) if len(s) else float("nan"),
                "tpr_at_1fpr": tpr_at_fpr(y, scores, 0.01) if len(s) and len(clean) >= 100 else float("nan"),
                "tpr_at_5fpr": tpr_at_fpr(y, scores, 0.05) if len(s) and len(clean) >= 20 else float("nan"),
                "flagged": float((s > threshold).mean()) if len(s) else float("nan"),
                "clean_fpr": float((clean > threshold).mean()) if len(clean) else float("nan"),
                "evaded": float((ok & (np.array([r["score"] for r in adv]) <= threshold)).mean()) if len(adv) else float("nan"),
                "evaded_at_1fpr": float((ok & (np.array([r["score"] for r in adv]) <= strict)).mean())
                if adv and strict == strict else float("nan"),
                "passes": float(np.mean([r["passes"] for r in adv])) if adv else 0.0,
            }
        )  # fmt: skip
    return out
