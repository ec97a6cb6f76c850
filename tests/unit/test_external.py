"""Adversarial images made elsewhere: pairing by path or id, unpaired grouping, one row per file; no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydetect.detect.dataset import FeatureSet
from raydetect.errors import RaydetectError
from raydetect.images import Preprocess
from raydetect.stages.external import ExternalImages, ReadExternal, group_key, parse_adversarial, plan_external
from tests.helpers import digit_png

GREY8 = Preprocess(resize=8, crop=8, channels=1)


def _write(root, names: list[str], data: bytes | None = None) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data if data is not None else digit_png(i))


def _by_id(items: list[dict]) -> dict[str, dict]:
    ids = [it["item"] for it in items]
    assert len(ids) == len(set(ids)), "an id appeared twice"
    return {it["item"]: it for it in items}


def test_paired_by_relative_path_accounts_for_every_file(tmp_path) -> None:
    _write(tmp_path / "clean", ["a/x.JPEG", "a/y.png", "z.png", "dup.png", "dup.jpg"])
    _write(tmp_path / "pgd", ["a/x.png", "a/y.png", "orphan.png", "z.png"])
    _write(tmp_path / "pgd2", ["a/x.png", "a/x.webp"])  # two images for one original and attack
    spec = ExternalImages(str(tmp_path / "clean"), (("pgd", str(tmp_path / "pgd")), ("cw", str(tmp_path / "pgd2")))).validate()
    items = _by_id(plan_external(spec))
    assert spec.resolved().pairing == "path"
    ok = {k for k, it in items.items() if not it["error"]}
    assert ok == {"a/x.JPEG", "a/y.png", "z.png", "dup.jpg", "a/x.JPEG|pgd", "a/y.png|pgd", "z.png|pgd", "a/x.JPEG|cw"}
    assert items["a/x.JPEG|pgd"]["pair_id"] == "a/x.JPEG" and items["a/x.JPEG|pgd"]["kind"] == "adversarial"
    assert "same key" in items["dup.png"]["error"]
    assert "no clean original" in items["orphan.png|pgd"]["error"]
    assert "second cw image" in items["a/x.JPEG|cw~2"]["error"]
    assert len(items) == 5 + 4 + 2  # every file once


def test_paired_by_id_in_parquet(tmp_path) -> None:
    clean = pa.table({"id": ["c0", "c1", "c2"], "image": [digit_png(i) for i in range(3)]})
    adv = pa.table({"id": ["a0", "a1", "a9"], "pair_id": ["c0", "c2", "nope"], "image": [digit_png(i) for i in range(3)]})
    pq.write_table(clean, tmp_path / "clean.parquet")
    pq.write_table(adv, tmp_path / "adv.parquet", row_group_size=2)
    spec = ExternalImages(str(tmp_path / "clean.parquet"), (("autoattack", str(tmp_path / "adv.parquet")),)).validate()
    items = _by_id(plan_external(spec))
    assert spec.resolved().pairing == "id"
    assert items["c2|autoattack"]["pair_id"] == "c2" and items["c2|autoattack"]["rg"] == 0
    assert "no clean original with id 'nope'" in items["a9|autoattack"]["error"]
    # The reader decodes each row from its row group, errors passed through as rows.
    batch = {k: np.array([it[k] for it in items.values()], dtype=object) for k in next(iter(items.values()))}
    rows = ReadExternal([spec.clean, spec.adversarial[0][1]], GREY8)(batch)
    assert sorted(rows["id"]) == sorted(items)
    status = dict(zip(rows["id"], rows["status"], strict=True))
    assert status["a9|autoattack"] == "error" and status["c0|autoattack"] == "ok" and status["c1"] == "ok"
    assert rows["image"].shape == (6, 1, 8, 8)
    assert set(rows["success"][rows["kind"] == "adversarial"]) == {True}


def test_unpaired_sets_group_near_duplicates_by_id(tmp_path) -> None:
    _write(tmp_path / "clean", ["cats/img_001.png", "cats/img_002.png", "dogs/img_003.png"])
    _write(tmp_path / "adv", ["cats/img_001_adv.png", "cats/img_002-PGD.png", "other/img_009.cw.png"])
    spec = ExternalImages(str(tmp_path / "clean"), (("mixed", str(tmp_path / "adv")),), pairing="none").validate()
    items = _by_id(plan_external(spec))
    groups = {k: it["pair_id"] for k, it in items.items()}
    assert groups["cats/img_001.png"] == groups["cats/img_001_adv.png|mixed"] == "cats/img_001"
    assert groups["cats/img_002.png"] == groups["cats/img_002-PGD.png|mixed"]
    assert groups["other/img_009.cw.png|mixed"] == "other/img_009"
    assert len(set(groups.values())) == 4 and not any(it["error"] for it in items.values())
    assert "attack suffixes" in spec.grouping()
    # A regex of the user's: the image number alone.
    assert group_key("x/img_001_whatever.png", r"img_(\d+)") == "001"
    regex = ExternalImages(str(tmp_path / "clean"), (("m", str(tmp_path / "adv")),), "none", r"img_(\d+)").validate()
    assert {it["pair_id"] for it in plan_external(regex)} == {"001", "002", "003", "009"}
    assert "img_" in regex.grouping()


def test_unpaired_feature_rows_keep_every_clean_image() -> None:
    fs = FeatureSet(
        X=np.arange(10, dtype=np.float32).reshape(5, 2),
        kind=np.array(["clean", "clean", "clean", "adversarial", "adversarial"], dtype=object),
        pair=np.array(["g1", "g2", "g3", "g1", "g4"], dtype=object),
        attack=np.array(["", "", "", "pgd", "pgd"], dtype=object),
        correct=np.ones(5, bool),  # imported images are not re-judged (ReadExternal marks them correct)
    )
    _, y, pairs = fs.for_attacks(["pgd"])
    assert list(y) == [0, 0, 0, 1, 1] and list(pairs) == ["g1", "g2", "g3", "g1", "g4"]
    _, y, _ = fs.for_attacks(["pgd"], paired_only=True)  # only clean twins of adversarial images
    assert list(y) == [0, 1, 1]


def test_options_are_checked() -> None:
    assert parse_adversarial(["adv/"]) == (("external", "adv/"),)
    assert parse_adversarial(["cw=s3://b/cw", "pgd=/data/pgd"]) == (("cw", "s3://b/cw"), ("pgd", "/data/pgd"))
    with pytest.raises(RaydetectError, match="own name"):
        ExternalImages("c", (("a", "x"), ("a", "y"))).validate()
    with pytest.raises(RaydetectError, match="pairing none"):
        ExternalImages("c", (("a", "x"),), group_regex="(.*)").validate()
    with pytest.raises(RaydetectError, match="pairing must be"):
        ExternalImages("c", (("a", "x"),), pairing="fuzzy").validate()
