"""Which explanation features separate clean from adversarial images, and at what cost?

    python bench/study.py sweep  --model efficientnet_lite0 --images 128   # wide, on a subset
    python bench/study.py final  --model efficientnet_lite0                # best configs, all images
    python bench/study.py paper  --model efficientnet_lite0                # the paper's protocol
    python bench/study.py sweep  --model digits_cnn --images 360           # (and final, paper)
    python bench/study.py report                                           # tables -> stdout

Everything expensive is cached under --out (default runs/study/<model>/): the clean set, each
attack's 8-bit adversarial images, and for each explainer the full descriptor matrix of every
image. An attribution map is computed once per (explainer, image) and every descriptor subset
and detector is evaluated from the cached matrix, so re-running a stage only fills what is
missing. Rows go to results.jsonl with the command that produced them.

Evaluation: 5-fold cross-validation grouped by pair (a clean image and its twin share a fold),
out-of-fold scores -> ROC AUC with a 95% pair-bootstrap interval, TPR at 5% FPR. The
"passes" column counts gradient passes per image of the explanation (what an audit pays per
image on top of one forward pass).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydetect.attacks import make_attack, quantize
from raydetect.config import DESCRIPTORS, AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, parse_eps
from raydetect.detect.fit import fit_head
from raydetect.detect.metrics import bootstrap_ci, roc_auc, tpr_at_fpr
from raydetect.detect.splits import grouped_folds
from raydetect.explain import Explainer, describe, feature_names
from raydetect.images import batches, load_digits_images, load_image_folder
from raydetect.models import ImageClassifier, load_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
FULL = FeatureConfig(descriptors=tuple(DESCRIPTORS), quantiles=64)  # type: ignore[arg-type]
MODES = ("untargeted", "random", "second")
EPS_GRID = (0.1, 16 / 255, 8 / 255, 4 / 255, 2 / 255)

# Explainers of the sweep. Names are stable cache keys.
EXPLAINERS: dict[str, AttributionConfig] = {
    "ig16-blur4": AttributionConfig(n_steps=16, baseline="blur", blur_sigma=4.0),
    "ig16-black": AttributionConfig(n_steps=16, baseline="black"),
    "ig16-noise": AttributionConfig(n_steps=16, baseline="noise"),
    "ig8-blur4": AttributionConfig(n_steps=8, baseline="blur"),
    "ig4-blur4": AttributionConfig(n_steps=4, baseline="blur"),
    "ig32-blur4": AttributionConfig(n_steps=32, baseline="blur"),
    "ig16-blur2": AttributionConfig(n_steps=16, baseline="blur", blur_sigma=2.0),
    "ig16-blur8": AttributionConfig(n_steps=16, baseline="blur", blur_sigma=8.0),
    "ig16-blur1": AttributionConfig(n_steps=16, baseline="blur", blur_sigma=1.0),
    "ig4-blur2": AttributionConfig(n_steps=4, baseline="blur", blur_sigma=2.0),
    "ig4-blur1": AttributionConfig(n_steps=4, baseline="blur", blur_sigma=1.0),
    "ig8-blur2": AttributionConfig(n_steps=8, baseline="blur", blur_sigma=2.0),
    "ig32-blur2": AttributionConfig(n_steps=32, baseline="blur", blur_sigma=2.0),
    "layer-early-blur4": AttributionConfig(explainer="layer_ig", layer="early", n_steps=16, baseline="blur"),
    "layer-middle-blur4": AttributionConfig(explainer="layer_ig", layer="middle", n_steps=16, baseline="blur"),
    "layer-late-blur4": AttributionConfig(explainer="layer_ig", layer="late", n_steps=16, baseline="blur"),
    "layer-early-black": AttributionConfig(explainer="layer_ig", layer="early", n_steps=16, baseline="black"),
    "gradshap16-train": AttributionConfig(explainer="gradient_shap", baseline="train", samples=16),
    "smoothgrad-ig8x4-blur4": AttributionConfig(explainer="ig_smoothgrad", n_steps=8, samples=4, noise_std=0.05, baseline="blur"),
    "saliency": AttributionConfig(explainer="saliency"),
    "ig64-blur4": AttributionConfig(n_steps=64, baseline="blur"),
    "ig4-black": AttributionConfig(n_steps=4, baseline="black"),
    "ig64-black": AttributionConfig(n_steps=64, baseline="black"),
}

# Descriptor subsets, as column-name prefixes of the full descriptor (see explain.feature_names).
DESCRIPTOR_SETS: dict[str, tuple[str, ...]] = {
    "signed quantiles (paper)": ("q",),
    "abs quantiles": ("absq",),
    "signed+abs quantiles": ("q", "absq"),
    "per-channel quantiles": ("c",),
    "stats": ("stat_",),
    "concentration": ("conc_",),
    "all attribution-map": ("q", "absq", "c", "stat_", "conc_"),
    "logits only (control)": ("logit_",),
    "baseline logits": ("base_",),
    "logits + baseline logits": ("logit_", "base_"),
    "map + logits + baseline logits": ("q", "absq", "c", "stat_", "conc_", "logit_", "base_"),
    "map + baseline logits": ("q", "absq", "c", "stat_", "conc_", "base_"),
}


def column_mask(names: list[str], prefixes: tuple[str, ...]) -> np.ndarray:
    def match(n: str, p: str) -> bool:
        if p == "q":  # signed quantiles are q0..qK, not the per-channel c0q...
            return n.startswith("q") and n[1:].isdigit()
        if p == "c":
            return n.startswith("c") and "q" in n and n[1 : n.index("q")].isdigit()
        return n.startswith(p)

    return np.array([any(match(n, p) for p in prefixes) for n in names])


class Study:
    def __init__(self, model_name: str, data: Path, out: Path, n_images: int | None, batch_size: int = 16) -> None:
        self.model_name = model_name
        self.data = data
        self.out = out / model_name
        self.out.mkdir(parents=True, exist_ok=True)
        self.n_images = n_images
        self.batch_size = batch_size
        self._model: ImageClassifier | None = None
        self.command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    @property
    def model(self) -> ImageClassifier:
        if self._model is None:
            self._model = load_model(ModelConfig(name=self.model_name, device="cpu"))
        return self._model

    # -- data ---------------------------------------------------------------------------------
    def clean(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All correctly classified images (cached), a reference pool kept apart for GradientShap."""
        path = self.out / "clean.npz"
        if not path.exists():
            if self.model_name == "digits_cnn":
                imgs = load_digits_images("test")
            else:
                imgs = load_image_folder(self.data, self.model.info.preprocess)
            x = quantize(torch.from_numpy(imgs.images))
            y = torch.from_numpy(imgs.labels)
            with torch.no_grad():
                pred = torch.cat([self.model(x[s]).argmax(1) for s in batches(len(x), 64)])
            ok = (pred == y).numpy()
            np.savez(path, x=np.rint(x.numpy()[ok] * 255).astype(np.uint8), y=y.numpy()[ok], n_total=len(x))
        with np.load(path) as d:
            x = torch.from_numpy(d["x"].astype(np.float32) / 255)
            y = torch.from_numpy(d["y"])
        # A fixed pool of 32 clean images (spread over the set) serves only as GradientShap
        # references and never enters the evaluation.
        ref = np.zeros(len(x), bool)
        ref[np.linspace(0, len(x) - 1, 32).astype(int)] = True
        study = np.flatnonzero(~ref)
        if self.n_images:
            study = study[: self.n_images]
        return x[study], y[study], x[torch.from_numpy(np.flatnonzero(ref))]

    def adversarial(self, cfg: AttackConfig, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """8-bit adversarial images and success per image (cached per attack over the whole set)."""
        path = self.out / "adv" / f"{cfg.method}-{cfg.mode}-{cfg.eps:.6f}-{cfg.steps}.npz"
        n = len(x)
        if path.exists():
            with np.load(path) as d:
                if len(d["success"]) >= n:
                    return torch.from_numpy(d["adv"][:n].astype(np.float32) / 255), d["success"][:n]
        path.parent.mkdir(exist_ok=True)
        attack = make_attack(self.model, cfg)
        advs, succ = [], []
        t0 = time.perf_counter()
        for s in batches(n, self.batch_size):
            r = attack(x[s], y[s], keys=np.arange(s.start, s.stop))  # 8-bit, judged on the 8-bit image
            succ.append(r.success)
            advs.append(r.adversarial)
        adv, success = torch.cat(advs), torch.cat(succ).numpy()
        np.savez(path, adv=np.rint(adv.numpy() * 255).astype(np.uint8), success=success)
        log(f"attack {cfg.name}: {success.mean():.1%} success on {n} images, {time.perf_counter() - t0:.0f} s")
        return adv, success

    def features(
        self,
        explainer: str,
        tag: str,
        images: torch.Tensor,
        refs: torch.Tensor,
        twins: torch.Tensor | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Full descriptor matrix (N, D) of ``images`` under one explainer; rows outside ``mask`` stay NaN.

        Cached per (explainer, tag); only rows not computed before are explained.
        """
        cfg = EXPLAINERS[explainer] if twins is None else AttributionConfig(n_steps=16, baseline="pair")
        path = self.out / "feats" / explainer / f"{tag}.npz"
        n = len(images)
        dim = len(feature_names(FULL))
        feats, computed = np.full((n, dim), np.nan, np.float32), np.zeros(n, bool)
        if path.exists():
            with np.load(path) as d:
                m = min(n, len(d["computed"]))
                feats[:m], computed[:m] = d["feats"][:m], d["computed"][:m]
        want = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
        need = np.flatnonzero(want & ~computed)
        if len(need) == 0:
            return feats
        path.parent.mkdir(parents=True, exist_ok=True)
        ex = Explainer(self.model, cfg, refs if cfg.baseline == "train" else None)
        t0 = time.perf_counter()
        for k in range(0, len(need), self.batch_size):
            idx = need[k : k + self.batch_size]
            t = torch.from_numpy(idx)
            e = ex(images[t], keys=idx, twins=None if twins is None else twins[t])
            feats[idx], computed[idx] = describe(e, FULL).numpy(), True
        np.savez(path, feats=feats, computed=computed)
        log(f"features {explainer}/{tag}: {len(need)} images, {time.perf_counter() - t0:.0f} s")
        return feats

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self, fc: np.ndarray, fa: np.ndarray, success: np.ndarray, columns: np.ndarray, detector: str, n_boot: int = 500
    ) -> dict[str, Any]:
        idx = np.flatnonzero(success)
        X = np.concatenate([fc[idx], fa[idx]])[:, columns]
        y = np.r_[np.zeros(len(idx), int), np.ones(len(idx), int)]
        pairs = np.r_[idx, idx]
        scores = np.zeros(len(y))
        for train, test in grouped_folds(pairs, 5, seed=0):
            scores[test] = fit_head(detector, X[train], y[train]).predict_proba(X[test])
        lo, hi = bootstrap_ci(y, scores, pairs, roc_auc, n_boot, seed=0)
        return {"auc": roc_auc(y, scores), "ci": [lo, hi], "tpr5": tpr_at_fpr(y, scores, 0.05), "pairs": len(idx)}

    def transfer(
        self,
        fc: np.ndarray,
        fa_train: np.ndarray,
        s_train: np.ndarray,
        fa_test: np.ndarray,
        s_test: np.ndarray,
        columns: np.ndarray,
        detector: str,
    ) -> dict[str, Any]:
        """Train on one attack's pairs, test on another attack's pairs of *other* images (same folds)."""
        n = len(fc)
        scores_y, scores_s, scores_p = [], [], []
        for train, test in grouped_folds(np.arange(n), 5, seed=0):
            tr = train[s_train[train]]
            te = test[s_test[test]]
            if len(tr) < 4 or len(te) < 2:
                continue
            Xtr = np.concatenate([fc[tr], fa_train[tr]])[:, columns]
            ytr = np.r_[np.zeros(len(tr), int), np.ones(len(tr), int)]
            model = fit_head(detector, Xtr, ytr)
            Xte = np.concatenate([fc[te], fa_test[te]])[:, columns]
            scores_s.append(model.predict_proba(Xte))
            scores_y.append(np.r_[np.zeros(len(te), int), np.ones(len(te), int)])
            scores_p.append(np.r_[te, te])
        y, s, p = np.concatenate(scores_y), np.concatenate(scores_s), np.concatenate(scores_p)
        lo, hi = bootstrap_ci(y, s, p, roc_auc, 500, seed=0)
        return {"auc": roc_auc(y, s), "ci": [lo, hi], "tpr5": tpr_at_fpr(y, s, 0.05), "pairs": len(np.unique(p))}

    def record(self, section: str, **row: Any) -> None:
        row = {"section": section, "model": self.model_name, "command": self.command, **row}
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        ci = row.get("ci", [float("nan")] * 2)
        what = " | ".join(str(row.get(k)) for k in ("attack", "explainer", "descriptor", "detector"))
        log(f"[{section}] {what}: AUC {row['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def descriptor_passes(descriptor: str, cfg: AttributionConfig) -> int:
    """Gradient passes per image a descriptor set needs: none when it reads logits only (the
    baseline logits cost one extra forward pass of the blurred or black image, no gradient)."""
    if all(p in ("logit_", "base_") for p in DESCRIPTOR_SETS[descriptor]):
        return 0
    return cfg.passes_per_image


def sweep(st: Study, explainers: list[str], eps_list: tuple[float, ...]) -> None:
    """Every explainer x descriptor set (LR) and the three detectors on a few sets, untargeted BIM."""
    x, y, refs = st.clean()
    names = feature_names(FULL)
    attacks = [AttackConfig(eps=e) for e in eps_list]
    advs = [st.adversarial(a, x, y) for a in attacks]
    done = done_rows(st, "sweep")
    for ename in explainers:
        cfg = EXPLAINERS[ename]
        fc = st.features(ename, "clean", x, refs)
        for a, (adv, succ) in zip(attacks, advs, strict=True):
            fa = st.features(ename, a.name.replace("/", "_"), adv, refs, mask=succ)
            for dname, prefixes in DESCRIPTOR_SETS.items():
                detectors = (
                    ("lr", "rf", "xgboost")
                    if dname
                    in (
                        "map + logits + baseline logits",
                        "all attribution-map",
                        "signed quantiles (paper)",
                        "logits only (control)",
                    )
                    else ("lr",)
                )
                for det in detectors:
                    key = (a.name, ename, dname, det)
                    if key in done:
                        continue
                    res = st.evaluate(fc, fa, succ, column_mask(names, prefixes), det)
                    p = descriptor_passes(dname, cfg)
                    st.record("sweep", attack=a.name, explainer=ename, descriptor=dname, detector=det, passes=p, **res)


def final(st: Study, explainers: list[str], descriptors: list[str], detectors: list[str]) -> None:
    """The chosen configurations on every image: BIM x 3 modes x 5 eps, then PGD/FGSM transfer."""
    x, y, refs = st.clean()
    names = feature_names(FULL)
    done = done_rows(st, "final") | done_rows(st, "transfer")
    eps_grid = EPS_GRID if st.model_name != "digits_cnn" else (0.3, 0.2, *EPS_GRID)
    for e in eps_grid:
        bims = {m: st.adversarial(AttackConfig(mode=m, eps=e), x, y) for m in MODES}
        others = (
            {m: st.adversarial(AttackConfig(method=m, eps=e), x, y) for m in ("pgd", "fgsm")} if e in (0.1, 4 / 255, 0.3) else {}
        )
        for ename in explainers:
            cfg = EXPLAINERS[ename]
            fc = st.features(ename, "clean", x, refs)
            for m, (adv, succ) in bims.items():
                a = AttackConfig(mode=m, eps=e)
                if succ.sum() < 10:
                    log(f"skip {a.name}: {succ.sum()} successes")
                    continue
                fa = st.features(ename, a.name.replace("/", "_"), adv, refs, mask=succ)
                for dname in descriptors:
                    for det in detectors if dname == descriptors[0] else detectors[:1]:  # others: the first detector
                        if (a.name, ename, dname, det) in done:
                            continue
                        res = st.evaluate(fc, fa, succ, column_mask(names, DESCRIPTOR_SETS[dname]), det)
                        p = descriptor_passes(dname, cfg)
                        st.record(
                            "final",
                            attack=a.name,
                            explainer=ename,
                            descriptor=dname,
                            detector=det,
                            passes=p,
                            success=float(succ.mean()),
                            **res,
                        )
            if not others:
                continue
            base_adv, base_succ = bims["untargeted"]
            if base_succ.sum() < 10:  # too few pairs to train a transfer detector on
                continue
            fa_train = st.features(ename, AttackConfig(eps=e).name.replace("/", "_"), base_adv, refs, mask=base_succ)
            for m, (adv, succ) in others.items():
                if succ.sum() < 10:
                    continue
                a = AttackConfig(method=m, eps=e)
                fa = st.features(ename, a.name.replace("/", "_"), adv, refs, mask=succ)
                for dname in descriptors:
                    for det in detectors if dname == descriptors[0] else detectors[:1]:
                        key = (f"{AttackConfig(eps=e).name} -> {a.name}", ename, dname, det)
                        if key in done:
                            continue
                        res = st.transfer(fc, fa_train, base_succ, fa, succ, column_mask(names, DESCRIPTOR_SETS[dname]), det)
                        p = descriptor_passes(dname, cfg)
                        st.record(
                            "transfer",
                            attack=key[0],
                            explainer=ename,
                            descriptor=dname,
                            detector=det,
                            passes=p,
                            success=float(succ.mean()),
                            **res,
                        )


def paper(st: Study, detectors: list[str]) -> None:
    """The paper's protocol: one eps=0.1 step, each image explained against its twin, signed quantiles."""
    x, y, refs = st.clean()
    names = feature_names(FULL)
    done = done_rows(st, "paper")
    for m in MODES:
        a = AttackConfig(method="paper_bim", mode=m, eps=0.1)
        adv, succ = st.adversarial(a, x, y)
        if succ.sum() < 10:
            log(f"skip {a.name}: {succ.sum()} successes")
            continue
        tag = a.name.replace("/", "_")
        fc = st.features("pair", f"clean-vs-{tag}", x, refs, twins=adv, mask=succ)
        fa = st.features("pair", tag, adv, refs, twins=x, mask=succ)
        for dname in ("signed quantiles (paper)", "map + logits + baseline logits"):
            for det in detectors:
                if (a.name, "pair", dname, det) in done:
                    continue
                res = st.evaluate(fc, fa, succ, column_mask(names, DESCRIPTOR_SETS[dname]), det)
                st.record(
                    "paper",
                    attack=a.name,
                    explainer="ig16-pair (twin as baseline)",
                    descriptor=dname,
                    detector=det,
                    passes=16,
                    success=float(succ.mean()),
                    **res,
                )


def done_rows(st: Study, section: str) -> set[tuple[str, str, str, str]]:
    path = st.out / "results.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        (r["attack"], r["explainer"] if section != "paper" else "pair", r["descriptor"], r["detector"])
        for r in rows
        if r["section"] == section
    }


def render(out: Path) -> str:
    """Markdown tables of every results.jsonl under ``out``, grouped by model and section."""
    lines = []
    for path in sorted(out.glob("*/results.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        latest: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        for r in rows:  # a re-run replaces its row
            latest[(r["section"], r["attack"], r["explainer"], r["descriptor"], r["detector"])] = r
        for section in ("sweep", "final", "transfer", "paper"):
            sel = [r for k, r in latest.items() if k[0] == section]
            if not sel:
                continue
            lines += [f"### {path.parent.name}: {section}", "", f"`{sel[0]['command']}`", ""]
            lines += [
                "| attack | explainer | descriptor | detector | passes | pairs | ROC AUC [95% CI] | TPR@5%FPR |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in sorted(sel, key=lambda r: (r["attack"], r["explainer"], r["descriptor"], r["detector"])):
                lines.append(
                    f"| {r['attack']} | {r['explainer']} | {r['descriptor']} | {r['detector']} | {r['passes']} | {r['pairs']} | "
                    f"{r['auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {100 * r['tpr5']:.1f}% |"
                )
            lines.append("")
    return "\n".join(lines)


def _latest(path: Path) -> list[dict[str, Any]]:
    latest: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["section"], r["attack"], r["explainer"], r["descriptor"], r["detector"])] = r
    return list(latest.values())


def _cell(r: dict[str, Any] | None) -> str:
    return "" if r is None else f"{r['auc']:.3f}"


def summarize(out: Path) -> str:
    """The curated tables of STUDY.md: pivots of results.jsonl (every figure is one row there)."""
    lines: list[str] = []
    for path in sorted(out.glob("*/results.jsonl")):
        rows = _latest(path)
        model = path.parent.name
        idx = {(r["section"], r["attack"], r["explainer"], r["descriptor"], r["detector"]): r for r in rows}
        sweep_rows = [r for r in rows if r["section"] == "sweep"]
        if sweep_rows:
            attacks = sorted({r["attack"] for r in sweep_rows}, key=lambda a: -parse_eps(a.rsplit("-", 1)[1]))
            explainers = sorted({r["explainer"] for r in sweep_rows})
            descs = ("signed quantiles (paper)", "all attribution-map", "map + logits + baseline logits")
            head = [f"{d} @ {a.split('-', 2)[2]}" for d in descs for a in attacks]
            lines += [
                f"#### {model}: sweep, explainer x descriptor (LR)",
                "",
                "| explainer | passes | " + " | ".join(head) + " |",
            ]
            lines.append("|---|---|" + "---|" * len(head))
            for e in explainers:
                cells = [_cell(idx.get(("sweep", a, e, d, "lr"))) for d in descs for a in attacks]
                passes = next((r["passes"] for r in sweep_rows if r["explainer"] == e and r["passes"]), 0)
                lines.append(f"| {e} | {passes} | " + " | ".join(cells) + " |")
            lines.append("")
            for e in [x for x in ("ig16-black", "ig16-blur2", "ig4-blur2", "ig4-blur1") if x in explainers]:
                lines += [f"#### {model}: sweep, descriptors and detectors under {e}", ""]
                head = [f"{det} @ {a.split('-', 2)[2]}" for det in ("lr", "rf", "xgboost") for a in attacks]
                lines += ["| descriptor | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
                for d in DESCRIPTOR_SETS:
                    cells = [_cell(idx.get(("sweep", a, e, d, det))) for det in ("lr", "rf", "xgboost") for a in attacks]
                    lines.append(f"| {d} | " + " | ".join(cells) + " |")
                lines.append("")
        final_rows = [r for r in rows if r["section"] == "final"]
        if final_rows:
            e = final_rows[0]["explainer"]
            main = final_rows[0]["descriptor"]
            descs = list(dict.fromkeys(r["descriptor"] for r in final_rows))
            lines += [f"#### {model}: final, every correctly classified image, explainer {e}", ""]
            cols = [f"{main}: {d}" for d in ("lr", "rf", "xgboost")] + [f"{d}: lr" for d in descs[1:]]
            lines += ["| attack | success | pairs | TPR@5%FPR (main, lr) | " + " | ".join(cols) + " |"]
            lines.append("|---|---|---|---|" + "---|" * len(cols))
            for a in sorted({r["attack"] for r in final_rows}, key=lambda a: (a.split("-")[1], -parse_eps(a.rsplit("-", 1)[1]))):
                m = idx.get(("final", a, e, main, "lr"))
                if m is None:
                    continue
                cells = [_cell(idx.get(("final", a, e, main, d))) for d in ("lr", "rf", "xgboost")]
                cells += [_cell(idx.get(("final", a, e, d, "lr"))) for d in descs[1:]]
                lines.append(
                    f"| {a} | {100 * m['success']:.1f}% | {m['pairs']} | {100 * m['tpr5']:.1f}% | " + " | ".join(cells) + " |"
                )
            lines.append("")
        for section, title in (
            ("transfer", "transfer (train on BIM untargeted, test on unseen attacks)"),
            ("paper", "paper protocol"),
        ):
            sel = sorted(
                (r for r in rows if r["section"] == section), key=lambda r: (r["attack"], r["descriptor"], r["detector"])
            )
            if not sel:
                continue
            lines += [
                f"#### {model}: {title}",
                "",
                "| attack | descriptor | detector | success | pairs | ROC AUC [95% CI] | TPR@5%FPR |",
            ]
            lines.append("|---|---|---|---|---|---|---|")
            for r in sel:
                lines.append(
                    f"| {r['attack']} | {r['descriptor']} | {r['detector']} | {100 * r['success']:.1f}% | {r['pairs']} | "
                    f"{r['auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {100 * r['tpr5']:.1f}% |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["sweep", "final", "paper", "report", "summary"])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    ap.add_argument("--images", type=int, default=None, help="Use the first N correctly classified images.")
    ap.add_argument("--explainer", action="append", help="Explainers (names in EXPLAINERS); default: all for sweep.")
    ap.add_argument("--descriptor", action="append", help="Descriptor sets for final.")
    ap.add_argument("--detector", action="append", help="Detectors for final/paper.")
    ap.add_argument("--eps", action="append", help="Eps for the sweep (default 0.1 and 4/255).")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.stage == "report":
        print(render(args.out))
        return
    if args.stage == "summary":
        print(summarize(args.out))
        return
    st = Study(args.model, args.data, args.out, args.images)
    if args.stage == "sweep":
        from raydetect.config import parse_eps

        eps = tuple(parse_eps(e) for e in args.eps) if args.eps else (0.1, 4 / 255)
        sweep(st, args.explainer or list(EXPLAINERS), eps)
    elif args.stage == "final":
        final(
            st,
            # The defaults are the published rows (STUDY.md's final tables).
            args.explainer or ["ig4-blur2"],
            args.descriptor
            or [
                "map + logits + baseline logits",
                "all attribution-map",
                "signed quantiles (paper)",
                "logits only (control)",
                "logits + baseline logits",
            ],
            args.detector or ["lr", "rf", "xgboost"],
        )
    else:
        paper(st, args.detector or ["lr", "rf"])


if __name__ == "__main__":
    main()
