"""Per-attack detectors (Table 2), the transfer matrix, and the one detector users audit with.

Pure computation over descriptor rows; the job around it (reading outputs, Ray Train, writing
the bundle and report) is ``stages.train``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydetect.config import ATTACK_MODES, AttributionConfig, DetectorConfig, FeatureConfig, from_dict
from raydetect.detect.bundle import Detector
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.fit import DEFAULT_PARAMS, CrossFit, FitJob, Fitter, clean_threshold, fit_local, split_rows
from raydetect.detect.heads import Head
from raydetect.detect.metrics import Calibration, evaluate, roc_auc
from raydetect.detect.splits import pair_split
from raydetect.errors import RaydetectError
from raydetect.explain import feature_names

# Fewest successful pairs an attack needs for a detector (and table row) of its own: an AUC
# over one or two held-out pairs is noise.
MIN_PAIRS = 10
MODE_ORDER = ATTACK_MODES


def attack_table(table: Any) -> list[dict[str, Any]]:
    """Table 1 rows from feature (or attack) output: success over correctly classified images."""
    rows: dict[str, dict[str, Any]] = {}
    cols = [c for c in ("kind", "attack", "method", "mode", "eps", "steps", "status", "success", "linf")
            if c in table.column_names]  # fmt: skip
    for r in table.select(cols).to_pylist():
        if r["kind"] != "adversarial":
            continue
        row = rows.setdefault(
            r["attack"],
            {"attack": r["attack"], "method": r["method"], "mode": r["mode"], "eps": r["eps"], "steps": r.get("steps", 0),
             "n_correct": 0, "n_success": 0, "max_linf": 0.0},
        )  # fmt: skip
        row["n_correct"] += 1
        row["n_success"] += int(bool(r["success"]))
        row["max_linf"] = max(row["max_linf"], float(r.get("linf") or 0.0))  # the stored (8-bit) perturbation
    out = sorted(
        rows.values(), key=lambda r: (r["eps"], r["method"], MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else 9)
    )
    for r in out:
        r["success_rate"] = r["n_success"] / r["n_correct"] if r["n_correct"] else float("nan")
    return out


@dataclass
class TrainingResult:
    attack_rows: list[dict[str, Any]]
    detection_rows: list[dict[str, Any]]
    transfer: dict[str, dict[str, dict[str, float]]]  # detector -> train attack -> test attack -> AUC
    detector: Detector  # trained on every chosen attack; not yet saved
    bundle_metrics: dict[str, Any]
    bundle_split: dict[str, list[str]]  # the bundle's images (pair ids) per side: fit, val, test
    # attack -> detector kind -> (labels, scores) of its held-out test rows: the ROC curves
    test_scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    splits: str = ""  # how rows were grouped for the splits, in words (the report says it)


def calibration_fields(cal: Calibration) -> dict[str, Any]:
    """What a detection row says about its threshold."""
    return {"target_fpr": cal.target_fpr, "calibration_rows": cal.rows, "expected_fpr": cal.expected_fpr,
            "fpr_range": list(cal.fpr_range), "calibration_achievable": cal.achievable}  # fmt: skip


def train_detectors(
    table: Any,
    job: dict[str, Any],
    kinds: tuple[str, ...] = ("lr",),
    cfg: DetectorConfig | None = None,
    attacks: list[str] | None = None,
    bundle_kind: str | None = None,
    fitter: Fitter = fit_local,
    n_boot: int = 1000,
    transfer: bool = True,
    progress: Callable[[str], None] | None = None,
    min_pairs: int = MIN_PAIRS,
    references: np.ndarray | None = None,
) -> TrainingResult:
    """Fit every detector kind per attack, evaluate on held-out pairs, and build one bundle.

    ``table``: feature-job rows; ``job``: the feature job's recorded config (model, attribution,
    features), which the bundle carries. The bundle (kind ``bundle_kind``, default the first of
    ``kinds``) is trained on all selected attacks together, as an auditor needs one detector for
    whatever attack comes; it sees k adversarial rows per clean image for k attacks, which is why
    its accuracy is balanced (see ``metrics.Evaluation``). Every correctly classified clean image
    takes part, also where no attack succeeded: validation ones choose the threshold (with
    ``cfg.calibration`` crossfit, the bundle also trains on them and every fit and validation clean
    row is scored out-of-fold), test ones measure the FPR. Attacks with fewer than ``min_pairs``
    successful pairs still feed the bundle, but get no detector and no row of their own.
    ``references``: the GradientShap reference images the features were explained against, which
    the bundle must carry to score.
    """
    cfg = cfg or DetectorConfig()
    say = progress or (lambda msg: None)
    fs = FeatureSet.from_table(table)
    chosen = attacks or fs.attacks
    unknown = set(chosen) - set(fs.attacks)
    if unknown:
        raise RaydetectError(
            f"no successful adversarial rows for {', '.join(sorted(unknown))}; present: {', '.join(fs.attacks) or 'none'}"
        )
    if not chosen:
        raise RaydetectError("the features hold no successful adversarial images to learn from")

    # (X, y, pairs) per attack and for all of them, selected once: the fits, the transfer
    # matrix and the bundle's evaluation all read the same rows.
    bkind = bundle_kind or kinds[0]
    by_attack = {a: fs.for_attacks([a]) for a in chosen}
    all_rows = fs.for_attacks(chosen)
    n_pairs = {a: len(set(by_attack[a][2][by_attack[a][1] == 1])) for a in chosen}
    evaluable = [a for a in chosen if n_pairs[a] >= min_pairs]
    for a in chosen:
        if a not in evaluable:
            say(f"{a}: only {n_pairs[a]} successful pairs (< {min_pairs}); no detector of its own")
    # Plan every fit first (per attack and kind, plus the bundle "*"), then fit them in one go.
    plans = [(kind, a, *by_attack[a]) for kind in kinds for a in evaluable]
    plans.append((bkind, "*", *all_rows))
    splits = [split_rows(pairs, cfg) for _, _, _, _, pairs in plans]
    # The bundle calibrates as cfg.calibration says; the per-attack rows of the report on a split,
    # since only the bundle's threshold is ever used.
    crossfits: list[CrossFit | None] = []
    jobs: list[FitJob] = []
    for (kind, a, X, y, pairs), s in zip(plans, splits, strict=True):
        if a == "*" and cfg.calibration == "crossfit":
            rows = np.sort(np.concatenate([s.fit, s.val]))
            crossfits.append(CrossFit.plan(kind, X[rows], y[rows], pairs[rows], params=cfg.params, seed=cfg.seed))
            jobs += crossfits[-1].jobs
        else:
            crossfits.append(None)
            jobs.append(FitJob(kind, X[s.fit], y[s.fit], cfg.params, cfg.seed))
    if bkind != "lr":
        # A differentiable surrogate for white-box attacks on the bundle (BPDA): an LR on the rows its
        # head trains on. Only its gradient is used (the bundle's own head and threshold judge), so it
        # needs no threshold and no folds.
        s, (X, y, _) = splits[-1], all_rows
        rows = np.sort(np.concatenate([s.fit, s.val])) if cfg.calibration == "crossfit" else s.fit
        jobs.append(FitJob("lr", X[rows], y[rows], None, cfg.seed))
    say(f"fitting {len(jobs)} detectors ({', '.join(kinds)}) on {len(chosen)} attack(s)")
    heads = iter(fitter(jobs))

    detection_rows: list[dict[str, Any]] = []
    test_scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    fitted: dict[tuple[str, str], tuple[Head, Calibration]] = {}
    for (kind, a, X, y, pairs), s, cf in zip(plans, splits, crossfits, strict=True):
        if cf is None:
            head = next(heads)
            cal = clean_threshold(head, X[s.val][y[s.val] == 0], cfg.target_fpr)
        else:
            head, cal = cf.finish([next(heads) for _ in cf.jobs], cfg.target_fpr)
        fitted[(kind, a)] = (head, cal)
        if a != "*":
            scores = head.predict_proba(X[s.test])
            ev = evaluate(y[s.test], scores, pairs[s.test], cal.threshold, n_boot, cfg.seed)
            detection_rows.append({"attack": a, "detector": kind, "train_rows": len(s.fit), **ev.to_dict(),
                                   **calibration_fields(cal)})  # fmt: skip
            test_scores.setdefault(a, {})[kind] = (y[s.test], scores)
    surrogate = next(heads) if bkind != "lr" else None  # its job came last

    def test_rows(a: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y, pairs = all_rows if a is None else by_attack[a]
        _, test = pair_split(pairs, cfg.test_fraction, cfg.seed)
        return X[test], y[test], pairs[test]

    matrix: dict[str, dict[str, dict[str, float]]] = {}
    if transfer and len(evaluable) > 1:
        for kind in kinds:
            matrix[kind] = {}
            for a in evaluable:
                head = fitted[(kind, a)][0]
                matrix[kind][a] = {}
                for b in evaluable:
                    Xb, yb, _ = test_rows(b)
                    matrix[kind][a][b] = roc_auc(yb, head.predict_proba(Xb))

    head, cal = fitted[(bkind, "*")]
    thr = cal.threshold
    source = "out-of-fold clean scores" if cfg.calibration == "crossfit" else "clean validation images"
    say(f"bundle threshold {cal.threshold:.4f} from {cal.rows} {source}: expected FPR {cal.expected_fpr:.1%}, "
        f"95% range {cal.fpr_range[0]:.1%}-{cal.fpr_range[1]:.1%} for a {cal.target_fpr:.0%} target")  # fmt: skip
    per_attack = {}
    for a in evaluable:
        Xa, ya, pa = test_rows(a)
        per_attack[a] = evaluate(ya, head.predict_proba(Xa), pa, thr, n_boot, cfg.seed).to_dict()
    Xt, yt, pt = test_rows(None)
    metrics = {
        "overall": {**evaluate(yt, head.predict_proba(Xt), pt, thr, n_boot, cfg.seed).to_dict(), **calibration_fields(cal)},
        "per_attack": per_attack,
        "accuracy": "balanced: mean of TPR and 1-FPR, whatever the ratio of adversarial to clean rows",
    }
    bundle_split = splits[[a for _, a, *_ in plans].index("*")].pair_ids(all_rows[2])
    calibration = {
        **cal.to_dict(),
        "split": {"fit_images": len(bundle_split["fit"]), "val_images": len(bundle_split["val"]),
                  "test_images": len(bundle_split["test"]), "val_fraction": cfg.val_fraction,
                  "test_fraction": cfg.test_fraction, "seed": cfg.seed, "calibration": cfg.calibration},
    }  # fmt: skip
    fcfg = job.get("features", {})
    acfg = from_dict(AttributionConfig, job["attribution"]) if job.get("attribution") else None
    names = feature_names(from_dict(FeatureConfig, fcfg), acfg) if fcfg else [f"f{i}" for i in range(all_rows[0].shape[1])]
    if len(names) != all_rows[0].shape[1]:
        raise RaydetectError(f"feature output has {all_rows[0].shape[1]} columns but its config names {len(names)}")
    detector = Detector(
        head=head, threshold=thr, target_fpr=cfg.target_fpr, model_config=job.get("model", {}),
        attribution=job.get("attribution", {}), features=fcfg, feature_names=names, trained_on=list(chosen),
        metrics=metrics, params={**DEFAULT_PARAMS[bkind], **cfg.params}, calibration=calibration, references=references,
        surrogate=surrogate,
    )  # fmt: skip
    grouping = describe_splits(job, fs, chosen)
    return TrainingResult(attack_table(table), detection_rows, matrix, detector, metrics, bundle_split, test_scores, grouping)


def describe_splits(job: dict[str, Any], fs: FeatureSet, attacks: list[str]) -> str:
    """How the splits grouped rows: pairs, or (unpaired images) the near-duplicate groups the ids allowed."""
    external = job.get("external")
    if not external:
        return "Splits keep each clean image and its adversarial twins on one side (pairs from the attack job)."
    names = ", ".join(attacks)
    if external.get("pairing") != "none":
        return (
            f"Adversarial images made elsewhere ({names}), {external.get('grouping', 'paired')}; each pair stays on one side "
            "of every split. Every imported adversarial image counts as a successful attack (raydetect did not re-judge it)."
        )
    _, y, groups = fs.for_attacks(attacks)
    kinds: dict[str, set[int]] = {}
    for g, label in zip(groups, y, strict=True):
        kinds.setdefault(g, set()).add(int(label))
    both = sum(1 for k in kinds.values() if len(k) == 2)
    return (
        f"Unpaired clean and adversarial images made elsewhere ({names}): {external.get('grouping', 'unpaired')}. "
        f"{len(y)} images in {len(kinds)} groups, {both} of which hold both a clean and an adversarial image; each group "
        "stays on one side of every split. Near-duplicates whose ids differ beyond that rule may straddle a split and "
        "flatter the held-out scores."
    )


def is_round_attack(name: str) -> bool:
    """Whether an attack's rows came from an adversarial training round (see :func:`round_rows`)."""
    return re.search(r"-round\d+$", name) is not None


def round_rows(table: Any, round_no: int) -> Any:
    """The adversarial rows of adversarial-training round ``round_no`` (``table``: that round's feature
    output), renamed ``<attack>-round<N>`` so that rounds stay apart from each other and from the
    attacks trained on before. Clean rows are dropped: the first training's rows already hold each
    image's clean row under the same id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    adv = table.filter(pc.equal(table.column("kind"), "adversarial"))
    names = pc.binary_join_element_wise(adv.column("attack"), pa.scalar(f"-round{round_no}"), "")
    ids = pc.binary_join_element_wise(adv.column("pair_id"), names, "|")
    adv = adv.set_column(adv.schema.get_field_index("attack"), "attack", names)
    return adv.set_column(adv.schema.get_field_index("id"), "id", ids)


def round_record(round_no: int, rows: Any, previous: Detector, bundle: str) -> dict[str, Any]:
    """What a round did, judged as an audit would judge it: of the images attacked (``rows``: the round's
    adversarial rows, skipped ones included), how many fooled the model, and how many of those the
    detector the round attacked (``previous``) let through at its threshold."""
    import pyarrow.compute as pc

    attacked = rows.num_rows
    ok = rows.filter(pc.equal(rows.column("status"), "ok"))
    passed = 0
    if ok.num_rows:
        X = FeatureSet.from_table(ok).X
        passed = int((previous.head.predict_proba(X) <= previous.threshold).sum())
    return {"round": round_no, "attacked": attacked, "fooled": ok.num_rows, "evaded": passed,
            "evaded_rate": passed / attacked if attacked else float("nan"), "attacked_detector": bundle,
            "threshold_before": previous.threshold}  # fmt: skip
