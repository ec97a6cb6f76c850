from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source
from raydetect.detect import Detector
from raydetect.detect.fit import FitJob, fit_head
from raydetect.detect.ray_fit import fit_on_ray
from raydetect.detect.splits import pair_split
from raydetect.stages.runner import FusedJob, run_job
from raydetect.stages.train import run_training, write_training_report
from raydetect.store import read_output


@pytest.mark.parametrize("kind", ["lr", "rf", "xgboost"])
def test_each_detector_kind_trains_through_ray_train(ray_cluster, kind, tmp_path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    params = {"n_estimators": 20} if kind == "rf" else None
    (remote,) = fit_on_ray([FitJob(kind, X, y, params)], storage=str(tmp_path))
    local = fit_head(kind, X, y, params)
    assert np.allclose(remote.predict_proba(X), local.predict_proba(X), atol=1e-6)


def test_training_job_writes_tables_transfer_matrix_and_a_bundle(ray_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output paths, as users type them (Ray Train wants absolute URIs)
    attacks = [AttackConfig(eps=0.3, steps=5), AttackConfig(mode="second", eps=0.3, steps=5)]
    fcfg = FeatureConfig(quantiles=8)
    job = FusedJob("f", ModelConfig(name="digits_cnn"), Source("digits", limit=120), attacks, AttributionConfig(n_steps=4), fcfg)
    run_job(job, ResourceConfig(batch_size=32))
    trained = run_training("f", "t", kinds=("lr", "rf"), use_ray=True, n_boot=50, figures=True)
    rep = trained.result
    assert {r["attack"] for r in rep.attack_rows} == {a.name for a in attacks}
    assert all(0 < r["success_rate"] <= 1 for r in rep.attack_rows)
    assert len(rep.detection_rows) == 4 and set(rep.transfer["rf"]) == {a.name for a in attacks}
    det = Detector.load(trained.bundle)
    det.check_compatible("digits_cnn", det.attribution, det.features)
    assert det.trained_on == sorted(a.name for a in attacks)
    assert det.metrics["overall"]["n_test_pairs"] > 0

    # The figures: the fused job stored no images, so Figure 1's pairs are attacked again from the
    # source; attacked and explained again here, they get the classes the job recorded for them.
    figs = trained.figures
    order = [r["attack"] for r in rep.attack_rows]
    assert [p.attack for p in figs.pairs] == [*order, *order]
    assert set(figs.distributions) == set(order)
    assert {a: sorted(k) for a, k in figs.roc.items()} == {a: ["lr", "rf"] for a in order}
    rows = read_output("f").to_pylist()
    recorded = {(r["pair_id"], r["kind"], r["attack"]): str(r["pred"]) for r in rows if r["status"] == "ok"}
    for p in figs.pairs:
        assert recorded[(p.name, "clean", "")] == p.clean_pred
        assert recorded[(p.name, "adversarial", p.attack)] == p.adversarial_pred
    assert len({p.name for p in figs.pairs}) > 1
    assert figs.notes == []
    write_training_report("f", "t", trained)
    assert all((tmp_path / "t" / f).stat().st_size > 10_000 for f in ("figure1_pairs.png", "figure2_distribution.png", "roc.png"))

    # Attacks with too few successful pairs get no detector row or transfer cell, but feed the bundle.
    few = run_training("f", "t2", kinds=("lr",), use_ray=False, n_boot=10, min_pairs=10_000)
    assert few.result.detection_rows == [] and few.result.transfer == {}
    assert Detector.load(few.bundle).trained_on == sorted(a.name for a in attacks)


def test_pair_split_is_consistent_across_attacks() -> None:
    a = np.array([f"img{i}" for i in range(40)])
    b = np.array([f"img{i}" for i in range(0, 40, 2)])
    _, ta = pair_split(a, 0.3, 0)
    _, tb = pair_split(b, 0.3, 0)
    assert set(b[tb]) == set(a[ta]) & set(b)


def test_adaptive_attack_evades_the_detector_more_often_than_bim(ray_cluster, digits_bundle, digits_test, monkeypatch) -> None:
    """The white-box attack must actually use the detector: it gets past it far more often than
    early-stopped BIM at the same eps, and than itself with the detector's term switched off (a
    broken adaptive attack fails this). The audit here draws its views with the public key (no
    RAYDETECT_SECRET), so the attacker computes every draw, as one who reads raydetect can."""
    from raydetect.attacks.suite import default_eot, robustness_suite
    from raydetect.detect.evaluation import robustness_rows
    from raydetect.stages.evaluate import EvaluateStage

    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    det = Detector.load(digits_bundle)
    model = det.load_model("cpu")
    n = 24
    idx = slice(300, 300 + n)  # digits the bundle never saw (it trained on the first 120)
    batch = {"id": np.array([f"d{i}" for i in range(300, 300 + n)], dtype=object), "label": digits_test.labels[idx],
             "image": digits_test.images[idx], "status": np.array(["ok"] * n, dtype=object),
             "error": np.array([""] * n, dtype=object)}  # fmt: skip
    eot = default_eot(det.configs()[1].jitter)  # the bundle's views draw random strengths: EOT over them
    suite = {a.method: a for a in robustness_suite(0.3, "digits_cnn", adaptive_steps=60, eot=eot, smooth=10.0)}
    rows = EvaluateStage(lambda: model, [det], [suite["bim"], suite["adaptive"]])(batch).to_pylist()
    by = {r["method"]: r for r in robustness_rows(rows, det.threshold)}
    # The same attack with the detector's term switched off (lam 0): what the detector's gradient adds.
    blind_rows = EvaluateStage(lambda: model, [det], [replace(suite["adaptive"], lam=0.0)])(batch).to_pylist()
    (blind,) = robustness_rows(blind_rows, det.threshold)
    assert by["adaptive"]["evaded"] > by["bim"]["evaded"] + 0.3, by
    assert by["adaptive"]["evaded"] > blind["evaded"] + 0.2, (by["adaptive"], blind)
    assert by["adaptive"]["passes"] > by["bim"]["passes"]
    adv = [r for r in rows if r["method"] == "adaptive"]
    assert all(r["linf"] <= 0.3 + 1e-6 for r in adv)


def test_adversarial_rounds_learn_the_white_box_attackers_images(ray_cluster, digits_bundle, tmp_path, monkeypatch) -> None:
    """One round of detector adversarial training on the digits bundle's features: the round attacks every
    image against the first detector, and the refitted detector flags more of the round's adversarials
    on *held-out* images than the detector they were made against (a round that adds no rows, or
    refits on the old ones, fails this). The public key: the attacker computes every draw."""
    import pyarrow.compute as pc

    from raydetect.config import AdversarialRounds
    from raydetect.detect.dataset import FeatureSet
    from raydetect.stages.train import run_adversarial_training

    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    features = str(digits_bundle.parents[1] / "f")
    out = tmp_path / "adv"
    trained = run_adversarial_training(features, str(out), AdversarialRounds(rounds=1, steps=20),
                                       ResourceConfig(batch_size=32), kinds=("lr",), use_ray=False, n_boot=20)  # fmt: skip
    (record,) = trained.rounds
    first, final = Detector.load(str(out / "rounds" / "0" / "detector")), Detector.load(trained.bundle)
    assert trained.bundle == str(out / "detector") and record["attacked_detector"] == str(out / "rounds" / "0" / "detector")
    name = "adaptive-untargeted-0.3-20x1-round1"
    assert name in final.trained_on and name not in first.trained_on
    assert record["attacked"] > 100 and 0 < record["evaded"] <= record["fooled"] <= record["attacked"]

    rows = read_output(str(out / "rounds" / "1" / "features"))
    adv = rows.filter(pc.and_(pc.equal(rows.column("kind"), "adversarial"), pc.equal(rows.column("status"), "ok")))
    fs = FeatureSet.from_table(adv)
    held_out = np.isin(fs.pair, trained.result.bundle_split["test"])
    assert held_out.sum() >= 10 and (~held_out).sum() >= 10  # attacked on both sides of the split
    X = fs.X[held_out]
    before = (first.head.predict_proba(X) > first.threshold).mean()
    after = (final.head.predict_proba(X) > final.threshold).mean()
    assert after > before + 0.2, (before, after)
    # the round's evaded count is the first detector's verdict on exactly these rows
    assert record["evaded"] == int((first.head.predict_proba(fs.X) <= first.threshold).sum())

    write_training_report(features, str(out), trained)
    report = (out / "report.md").read_text()
    assert "Adversarial training rounds" in report and name in report
