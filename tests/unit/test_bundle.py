from __future__ import annotations

import json

import numpy as np
import pytest

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, to_dict
from raydetect.detect import HEADS, Detector, ForestHead
from raydetect.detect.dataset import FeatureSet
from raydetect.detect.fit import fit_head
from raydetect.errors import RaydetectError
from raydetect.explain import feature_names
from raydetect.outputs import AUDIT_ROWS


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=300) * 0.5 > 0).astype(np.int64)
    return X, y


def test_forest_export_predicts_exactly_like_sklearn(data) -> None:
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    rf = RandomForestClassifier(n_estimators=40, random_state=0).fit(X, y)
    assert np.array_equal(ForestHead.from_sklearn(rf).predict_proba(X), rf.predict_proba(X)[:, 1])


def test_linear_model_matches_sklearn_pipeline(data) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=0)).fit(X, y)
    assert np.allclose(fit_head("lr", X, y).predict_proba(X), ref.predict_proba(X)[:, 1], atol=1e-9)


def _detector(kind: str, X: np.ndarray, y: np.ndarray) -> Detector:
    fcfg = FeatureConfig(descriptors=("stats",), quantiles=8)
    return Detector(
        head=fit_head(kind, X, y),
        threshold=0.5,
        target_fpr=0.05,
        model_config=to_dict(ModelConfig(name="digits_cnn")),
        attribution=to_dict(AttributionConfig(n_steps=4, views=(), jitter=0.0)),  # the blur view alone, fixed
        features=to_dict(fcfg),
        feature_names=feature_names(fcfg),
        trained_on=["bim-untargeted-0.3"],
        metrics={"overall": {"auc": 0.9}},
        params={},
    )


@pytest.mark.parametrize("kind", ["lr", "rf", "xgboost"])
def test_bundle_round_trip_gives_identical_scores(kind, data, tmp_path) -> None:
    X, y = data
    X = X[:, :12]
    det = _detector(kind, X, y)
    det.save(tmp_path / "b")
    back = Detector.load(tmp_path / "b")
    assert back.kind == kind and back.threshold == det.threshold and back.trained_on == det.trained_on
    assert np.array_equal(back.predict_proba(X), det.predict_proba(X))
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert files == {"manifest.json", "SHA256SUMS", HEADS[kind].file}
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)


@pytest.mark.parametrize("target", ["model", "manifest"])
def test_a_tampered_bundle_is_refused(target, data, tmp_path) -> None:
    X, y = data
    _detector("lr", X, y).save(tmp_path / "b")
    if target == "model":
        path = tmp_path / "b" / HEADS["lr"].file
        d = json.loads(path.read_text())
        d["intercept"] += 5.0  # a quiet edit that would flip many verdicts
        path.write_text(json.dumps(d))
    else:
        path = tmp_path / "b" / "manifest.json"
        m = json.loads(path.read_text())
        m["threshold"] = 0.99
        path.write_text(json.dumps(m))
    with pytest.raises(RaydetectError, match="checksum"):
        Detector.load(tmp_path / "b")


def test_missing_or_foreign_bundles_are_clear_errors(tmp_path) -> None:
    with pytest.raises(RaydetectError, match="not found"):
        Detector.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaydetectError, match="not a raydetect detector bundle"):
        Detector.load(tmp_path / "empty")


def test_feature_config_mismatch_is_refused(data) -> None:
    X, y = data
    det = _detector("lr", X, y)
    det.check_compatible("digits_cnn", det.attribution, det.features)
    with pytest.raises(RaydetectError, match="trained on model digits_cnn"):
        det.check_compatible("efficientnet_lite0")
    with pytest.raises(RaydetectError, match="n_steps"):
        det.check_compatible(attribution={**det.attribution, "n_steps": 32})
    with pytest.raises(RaydetectError, match="length"):
        det.predict_proba(X[:, :5])


def test_score_runs_model_explainer_and_descriptor(data, digits_model, digits_test) -> None:
    X, y = data
    det = _detector("lr", X, y)
    scores = det.score(digits_test.images[:5], model=digits_model)
    assert scores.shape == (5,) and np.all((scores >= 0) & (scores <= 1))
    assert det.flag(digits_test.images[:5], model=digits_model).dtype == bool


def test_feature_set_keeps_every_correct_clean_row() -> None:
    """Thresholds and FPR need all correctly classified clean images, not only those an attack fooled."""
    import pyarrow as pa

    rows = [
        {"kind": "clean", "pair_id": "a", "attack": "", "status": "ok", "correct": True},
        {"kind": "clean", "pair_id": "b", "attack": "", "status": "ok", "correct": True},
        {"kind": "clean", "pair_id": "c", "attack": "", "status": "ok", "correct": True},
        {"kind": "clean", "pair_id": "d", "attack": "", "status": "ok", "correct": False},  # misclassified: not attacked
        {"kind": "adversarial", "pair_id": "a", "attack": "x", "status": "ok", "correct": True},
        {"kind": "adversarial", "pair_id": "b", "attack": "y", "status": "ok", "correct": True},
        {"kind": "adversarial", "pair_id": "c", "attack": "x", "status": "skipped", "correct": True},
    ]
    feats = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(14, dtype=np.float32)), 2)
    table = pa.table({**{k: [r[k] for r in rows] for k in rows[0]}, "mode": ["m"] * 7, "eps": [0.1] * 7, "features": feats})
    fs = FeatureSet.from_table(table)
    assert fs.attacks == ["x", "y"]
    _, yy, pairs = fs.for_attacks(["x"])
    assert sorted(zip(pairs, yy, strict=True)) == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    _, yy, pairs = fs.for_attacks(["x"], paired_only=True)
    assert sorted(zip(pairs, yy, strict=True)) == [("a", 0), ("a", 1)]


@pytest.mark.parametrize("kind", ["lr", "rf", "xgboost"])
def test_torch_heads_equal_the_fitted_libraries(kind, data) -> None:
    """The heads score in torch; they must agree with the library that fitted them."""
    X, y = data
    head = fit_head(kind, X, y, {"n_estimators": 30} if kind == "rf" else {"num_boost_round": 30} if kind == "xgboost" else None)
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(head.to_bytes()))
        ref = booster.inplace_predict(X)
    elif kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        ref = RandomForestClassifier(n_estimators=30, random_state=0, max_features="sqrt").fit(X, y).predict_proba(X)[:, 1]
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        s = StandardScaler().fit(X)
        ref = LogisticRegression(max_iter=5000, random_state=0).fit(s.transform(X), y).predict_proba(s.transform(X))[:, 1]
    np.testing.assert_allclose(head.predict_proba(X), ref, atol=1e-5)
    assert 0.1 < head.predict_proba(X).mean() < 0.9  # not a constant


def test_one_score_serves_the_api_the_audit_and_the_gradient(data, digits_model, digits_test) -> None:
    """Detector.score, the audit stage and the differentiable score are one function."""
    import torch

    from raydetect.stages.audit import AuditStage

    det = _detector_on_images(digits_model, digits_test)
    x = digits_test.images[:12]
    api = det.score(x, model=digits_model)
    batch = {"id": np.array([f"i{i}" for i in range(12)], dtype=object), "path": np.array([""] * 12, dtype=object),
             "label": np.full(12, -1), "image": x, "status": np.array(["ok"] * 12, dtype=object),
             "error": np.array([""] * 12, dtype=object)}  # fmt: skip
    table = AuditStage(lambda: digits_model, det)(batch)
    assert table.schema.equals(AUDIT_ROWS.schema())  # what the report, rows.csv and scans read
    audit = np.array(table.column("score").to_pylist())
    xt = torch.from_numpy(x).requires_grad_(True)
    scored = det.scorer(digits_model).run(xt, create_graph=True)
    np.testing.assert_allclose(audit, api, atol=1e-6)
    np.testing.assert_allclose(scored.score.detach().numpy(), api, atol=1e-5)
    (grad,) = torch.autograd.grad(scored.logit.sum(), xt)
    assert grad.abs().sum() > 0  # the attacker's gradient reaches the image
    assert api.std() > 1e-3  # a real spread of scores, not a constant


def _detector_on_images(model, digits_test, kind: str = "lr") -> Detector:
    """A detector fitted on real descriptors of clean vs. noisy digits (enough to give spread); a
    tree head comes with its LR surrogate, as training makes it."""
    import torch

    from raydetect.explain import Explainer, describe

    acfg, fcfg = AttributionConfig(n_steps=4), FeatureConfig(quantiles=8)
    x = torch.from_numpy(digits_test.images[:80])
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ex = Explainer(model, acfg)
    X = torch.cat([describe(ex(x), fcfg), describe(ex(noisy), fcfg)]).numpy()
    y = np.r_[np.zeros(80, int), np.ones(80, int)]
    return Detector(
        head=fit_head(kind, X, y), threshold=0.5, target_fpr=0.05, model_config=to_dict(ModelConfig(name="digits_cnn")),
        attribution=to_dict(acfg), features=to_dict(fcfg), feature_names=feature_names(fcfg), trained_on=["noise"],
        metrics={}, params={}, surrogate=None if kind == "lr" else fit_head("lr", X, y),
    )  # fmt: skip


def test_a_keyed_bundle_warns_without_a_secret_and_carries_the_drivers_key(data, tmp_path, monkeypatch, caplog) -> None:
    from dataclasses import replace

    from raydetect.detect.bundle import load_for_audit
    from raydetect.explain.views import PUBLIC_KEY

    X, y = data
    det = _detector("lr", X, y)
    keyed = replace(det, attribution={**det.attribution, "jitter": 0.5})
    keyed.save(tmp_path / "keyed")
    det.save(tmp_path / "fixed")
    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    with caplog.at_level("WARNING"):
        loaded, _ = load_for_audit(str(tmp_path / "keyed"))
    assert loaded.views_key == PUBLIC_KEY and "RAYDETECT_SECRET is not set" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_for_audit(str(tmp_path / "fixed"))  # fixed views: nothing to keep secret
    assert "RAYDETECT_SECRET" not in caplog.text
    monkeypatch.setenv("RAYDETECT_SECRET", "auditor-a")
    loaded, _ = load_for_audit(str(tmp_path / "keyed"))
    assert loaded.views_key == b"auditor-a" and "auditor-a" not in repr(loaded)  # never printed
    from raydetect.models import load_model

    assert loaded.scorer(load_model(ModelConfig(name="digits_cnn"))).explainer.key == b"auditor-a"


def test_the_attacker_computes_public_key_draws_and_guesses_secret_ones(digits_model, digits_test, monkeypatch) -> None:
    """An attacker reads raydetect: with the public key (no RAYDETECT_SECRET) its detector logit is the
    audit's own score at every iterate; with a secret it can only guess the views' draws."""
    import torch

    from raydetect.explain.views import PUBLIC_KEY

    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    det = _detector_on_images(digits_model, digits_test)
    assert det.configs()[1].jitter > 0  # the default design draws its views' strengths
    x = torch.from_numpy(digits_test.images[:12])
    audit = torch.logit(torch.from_numpy(det.score(digits_test.images[:12], model=digits_model)))
    known = det.attack_logit(digits_model)
    assert known.known_key == PUBLIC_KEY and not known.random
    np.testing.assert_allclose(known.judge(x, draw=3).numpy(), audit.numpy(), atol=1e-4)
    np.testing.assert_allclose(known(x, draw=7).detach().numpy(), audit.numpy(), atol=1e-4)
    det.views_key = b"auditor-a"  # the audit's draws now depend on a secret the attacker lacks
    guess = det.attack_logit(digits_model)
    assert guess.known_key is None and guess.random
    secret_audit = torch.logit(torch.from_numpy(det.score(digits_test.images[:12], model=digits_model)))
    assert not np.allclose(guess.judge(x, draw=3).numpy(), secret_audit.numpy(), atol=1e-3)
    assert not np.allclose(guess.judge(x, draw=3).numpy(), guess.judge(x, draw=4).numpy(), atol=1e-3)  # EOT varies


def test_a_tree_heads_attacker_follows_the_surrogate_but_judges_by_the_forest(digits_model, digits_test, monkeypatch) -> None:
    """BPDA: the gradient comes from the LR surrogate; which iterate is best, and whether it passes,
    is decided by the forest itself at its own threshold (the attacker holds the bundle)."""
    import math

    import torch

    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    det = _detector_on_images(digits_model, digits_test, "rf")
    det.threshold = 0.7
    x = torch.from_numpy(digits_test.images[:12])
    forest = np.clip(det.score(digits_test.images[:12], model=digits_model), 1e-12, 1 - 1e-12)
    atk = det.attack_logit(digits_model)
    assert atk.threshold_logit == pytest.approx(math.log(0.7 / 0.3))
    np.testing.assert_allclose(torch.sigmoid(atk.judge(x, draw=0)).numpy(), forest, atol=1e-6)
    surrogate = torch.sigmoid(atk(x, draw=0)).detach().numpy()
    assert not np.allclose(surrogate, forest, atol=1e-3)  # the gradient's logit is another model's
