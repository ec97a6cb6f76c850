"""Each Ray stage's callable class, called directly on one batch: no Ray involved."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig
from raydetect.explain import feature_names
from raydetect.images import decode_png
from raydetect.outputs import ATTACK_ROWS, FEATURE_ROWS, Output
from raydetect.stages.attack import PIXELS, AttackStage, encode_pngs
from raydetect.stages.explain import FeatureStage
from raydetect.stages.rows import table_to_batch


@pytest.fixture(scope="module")
def image_batch(digits_test) -> dict[str, np.ndarray]:
    n = 6
    images = digits_test.images[:n].copy()
    status = np.array(["ok"] * (n - 1) + ["error"], dtype=object)
    return {
        "id": np.array([f"img{i}" for i in range(n)], dtype=object),
        "path": np.array([f"/x/img{i}.png" for i in range(n)], dtype=object),
        "label": digits_test.labels[:n].copy(),
        "image": images,
        "status": status,
        "error": np.array([""] * (n - 1) + ["corrupt or truncated image"], dtype=object),
    }


@pytest.fixture(scope="module")
def attacked(digits_model, image_batch) -> dict[str, np.ndarray]:
    attacks = [AttackConfig(eps=0.3, steps=10), AttackConfig(mode="second", eps=0.3, steps=10)]
    return table_to_batch(AttackStage(lambda: digits_model, attacks)(image_batch))


def test_attack_stage_rows(attacked, image_batch, digits_model) -> None:
    table = AttackStage(lambda: digits_model, [AttackConfig(eps=0.3, steps=2)])(image_batch)
    assert table.schema.equals(ATTACK_ROWS.schema())  # the layout the feature job and references read
    kinds = list(attacked["kind"])
    assert kinds.count("clean") == 6
    clean_ids = [i for i, k in zip(attacked["id"], kinds, strict=True) if k == "clean"]
    assert sorted(clean_ids) == sorted(image_batch["id"])
    err = np.flatnonzero(attacked["id"] == "img5")[0]
    assert attacked["status"][err] == "error" and "corrupt" in attacked["error"][err]
    adv = np.flatnonzero(attacked["kind"] == "adversarial")
    assert len(adv) == 2 * int(attacked["correct"][attacked["kind"] == "clean"].sum())
    for i in adv:
        img = decode_png(attacked["png"][i])
        clean = decode_png(attacked["png"][np.flatnonzero(attacked["id"] == attacked["pair_id"][i])[0]])
        assert np.abs(img - clean).max() <= 0.3 + 1e-6  # the stored 8-bit PNG honours eps
        assert img.min() >= 0 and img.max() <= 1
        assert attacked["id"][i] == f"{attacked['pair_id'][i]}|{attacked['attack'][i]}"


def test_png_encoding_after_the_actor_gives_the_same_rows(digits_model, image_batch) -> None:
    """Under Ray the model actor ships raw pixels and a CPU task encodes them: the same table."""
    attacks = [AttackConfig(eps=0.3, steps=2)]
    here = AttackStage(lambda: digits_model, attacks)(image_batch)
    raw = AttackStage(lambda: digits_model, attacks, encode=False)(image_batch)
    assert PIXELS in raw.column_names and not any(raw.column("png").to_pylist())  # the actor encoded nothing
    assert sum(map(bool, raw.column(PIXELS).to_pylist())) == raw.num_rows - 1  # all but the corrupt row's
    assert encode_pngs(raw).equals(here)
    assert encode_pngs(pa.table({})).num_rows == 0  # an all-done batch passes through


def test_attack_stage_success_is_judged_on_the_png(digits_model, attacked) -> None:
    import torch

    adv = np.flatnonzero(attacked["kind"] == "adversarial")
    x = torch.from_numpy(np.stack([decode_png(attacked["png"][i]) for i in adv]))
    with torch.no_grad():
        pred = digits_model(x).argmax(1).numpy()
    assert np.array_equal(pred, attacked["pred"][adv].astype(int))


def test_feature_stage_on_attack_rows(digits_model, attacked) -> None:
    fcfg = FeatureConfig(quantiles=8)
    acfg = AttributionConfig(n_steps=4)  # the default views: three explanations per image
    stage = FeatureStage(lambda: digits_model, acfg, fcfg, maps_fraction=1.0)
    out = stage(attacked)
    assert isinstance(out, pa.Table)
    rows = {r["id"]: r for r in out.to_pylist()}
    assert set(rows) == set(attacked["id"])  # every input row accounted for
    dim = len(feature_names(fcfg, acfg))
    assert out.schema.equals(FEATURE_ROWS.schema(dim))  # the layout every reader of feature rows reads
    assert dim > 2 * len(feature_names(fcfg))
    for r in rows.values():
        assert len(r["features"]) == dim
        if r["status"] == "ok":
            assert r["pred"] >= 0 and r["map"]
        else:
            assert r["status"] in ("error", "skipped") and r["error"]


def test_feature_stage_paper_protocol_explains_each_clean_per_attack(digits_model, attacked) -> None:
    stage = FeatureStage(lambda: digits_model, AttributionConfig(n_steps=4, baseline="pair"), FeatureConfig(quantiles=8))
    rows = stage(attacked).to_pylist()
    ok_adv = [r for r in rows if r["kind"] == "adversarial" and r["status"] == "ok"]
    clean_per_attack = [r for r in rows if r["kind"] == "clean" and r["status"] == "ok"]
    assert len(clean_per_attack) == len(ok_adv)
    assert all(r["id"] == f"{r['pair_id']}|clean|{r['attack']}" for r in clean_per_attack)


@pytest.mark.parametrize("keep_png", [False, True])
def test_fused_stage_without_png_equals_attack_then_feature_stage(digits_model, attacked, image_batch, keep_png) -> None:
    """The fused stage skips the PNG round trip; its rows must be those of the two stages chained."""
    from raydetect.stages.fused import AttackFeatureStage

    attacks = [AttackConfig(eps=0.3, steps=10), AttackConfig(mode="second", eps=0.3, steps=10)]
    attr, fcfg = AttributionConfig(n_steps=4), FeatureConfig(quantiles=8)
    chained = FeatureStage(lambda: digits_model, attr, fcfg)(attacked).to_pylist()
    fused = AttackFeatureStage(lambda: digits_model, attacks, attr, fcfg, keep_png=keep_png)(image_batch).to_pylist()
    assert [r["id"] for r in fused] == [r["id"] for r in chained]
    png = dict(zip(attacked["id"], attacked["png"], strict=True))
    for f, c in zip(fused, chained, strict=True):
        assert f.pop("png", png[f["id"]]) == png[f["id"]]  # kept PNGs are the attack stage's bytes
        np.testing.assert_array_equal(f.pop("features"), c.pop("features"))
        assert f == c


def test_feature_stage_draws_with_the_key_its_job_hands_it(digits_model, attacked, monkeypatch) -> None:
    """Actors on other nodes do not see the driver's RAYDETECT_SECRET: the job resolves the key and hands it
    over. A stage given a key explains as this process would with that secret, whatever its own."""
    acfg, fcfg = AttributionConfig(n_steps=4), FeatureConfig(quantiles=8)
    assert acfg.jitter > 0  # the default views draw their strengths per image

    def features(key: bytes | None) -> np.ndarray:
        rows = [r for r in FeatureStage(lambda: digits_model, acfg, fcfg, key=key)(attacked).to_pylist() if r["status"] == "ok"]
        return np.array([r["features"] for r in rows])

    monkeypatch.setenv("RAYDETECT_SECRET", "the driver's secret")
    driver = features(None)
    monkeypatch.setenv("RAYDETECT_SECRET", "another node's environment")
    np.testing.assert_array_equal(features(b"the driver's secret"), driver)
    assert not np.allclose(features(None), driver)  # the key decides the draws


def test_an_output_row_has_every_column_and_refuses_others() -> None:
    out = Output("toy", (("id", pa.string(), ""), ("score", pa.float64(), float("nan"))))
    row = out.row(id="a")
    assert list(row) == ["id", "score"] and row["id"] == "a" and np.isnan(row["score"])
    with pytest.raises(KeyError, match="no column scroe"):
        out.row(id="a", scroe=1.0)  # a misspelt column is a bug, not a new column
    assert out.table([out.row(id="a", score=1)]).schema.equals(out.schema())  # ints become the declared float
