from __future__ import annotations

import json

import numpy as np
import pytest

from raydetect.config import AttributionConfig, FeatureConfig, ModelConfig, to_dict
from raydetect.detector import MODEL_FILES, Detector, FeatureSet, ForestModel, fit_model
from raydetect.errors import RaydetectError
from raydetect.features import feature_names


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
    assert np.array_equal(ForestModel.from_sklearn(rf).predict_proba(X), rf.predict_proba(X)[:, 1])


def test_linear_model_matches_sklearn_pipeline(data) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=0)).fit(X, y)
    assert np.allclose(fit_model("lr", X, y).predict_proba(X), ref.predict_proba(X)[:, 1], atol=1e-9)


def _detector(kind: str, X: np.ndarray, y: np.ndarray) -> Detector:
    fcfg = FeatureConfig(descriptors=("stats",), quantiles=8)
    return Detector(
        model=fit_model(kind, X, y),
        threshold=0.5,
        target_fpr=0.05,
        model_config=to_dict(ModelConfig(name="digits_cnn")),
        attribution=to_dict(AttributionConfig(n_steps=4)),
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
    assert files == {"manifest.json", "SHA256SUMS", MODEL_FILES[kind]}
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)


@pytest.mark.parametrize("target", ["model", "manifest"])
def test_a_tampered_bundle_is_refused(target, data, tmp_path) -> None:
    X, y = data
    _detector("lr", X, y).save(tmp_path / "b")
    if target == "model":
        path = tmp_path / "b" / MODEL_FILES["lr"]
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


def test_feature_set_pairs_clean_rows_with_their_attack() -> None:
    import pyarrow as pa

    rows = [
        {"kind": "clean", "pair_id": "a", "attack": "", "status": "ok"},
        {"kind": "clean", "pair_id": "b", "attack": "", "status": "ok"},
        {"kind": "clean", "pair_id": "c", "attack": "", "status": "ok"},
        {"kind": "adversarial", "pair_id": "a", "attack": "x", "status": "ok"},
        {"kind": "adversarial", "pair_id": "b", "attack": "y", "status": "ok"},
        {"kind": "adversarial", "pair_id": "c", "attack": "x", "status": "skipped"},
    ]
    feats = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 2)
    table = pa.table({**{k: [r[k] for r in rows] for k in rows[0]}, "mode": ["m"] * 6, "eps": [0.1] * 6, "features": feats})
    fs = FeatureSet.from_table(table)
    assert fs.attacks == ["x", "y"]
    _, yy, pairs = fs.for_attacks(["x"])
    assert sorted(zip(pairs, yy, strict=True)) == [("a", 0), ("a", 1)]
