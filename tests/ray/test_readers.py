from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydetect.config import Source
from raydetect.errors import RaydetectError
from raydetect.images import Preprocess
from raydetect.stages.read import read_source
from tests.helpers import BROKEN_FILES, digit_png, write_digit_folder

GREY8 = Preprocess(resize=8, crop=8, channels=1)
RGB16 = Preprocess(resize=16, crop=16)


def _rows(ds) -> dict[str, dict]:
    rows = ds.take_all()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an input appeared twice"
    return {r["id"]: r for r in rows}


def test_folder_reader_accounts_for_every_file(ray_cluster, tmp_path) -> None:
    expected = write_digit_folder(tmp_path / "imgs", n=12)
    rows = _rows(read_source(Source(str(tmp_path / "imgs")), GREY8))
    assert set(rows) == set(expected)
    for rid, status in expected.items():
        assert rows[rid]["status"] == status, (rid, rows[rid]["error"])
    for name, reason in BROKEN_FILES.items():
        assert reason in rows[name]["error"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["image"].shape == (1, 8, 8) and r["label"] == -1 for r in ok)
    assert all(r["image"].min() >= 0 and r["image"].max() <= 1 for r in ok)


def test_imagenet_reader_labels_from_wnid_folders(ray_cluster, tmp_path) -> None:
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "a.png").write_bytes(digit_png(3, "RGB"))
    rows = _rows(read_source(Source(str(tmp_path)), RGB16))
    assert {r["label"] for r in rows.values()} == {0, 1}
    assert {r["image"].shape for r in rows.values()} == {(3, 16, 16)}


def test_parquet_reader_with_ids_labels_and_bad_rows(ray_cluster, tmp_path) -> None:
    blobs = [digit_png(i) for i in range(5)] + [b"garbage"]
    table = pa.table({"id": [f"img{i}" for i in range(6)], "label": list(range(6)), "image": blobs})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)
    rows = _rows(read_source(Source(str(tmp_path / "a.parquet")), GREY8))
    assert set(rows) == {f"img{i}" for i in range(6)}
    assert rows["img5"]["status"] == "error" and "not an image" in rows["img5"]["error"]
    assert rows["img2"]["label"] == 2 and rows["img2"]["status"] == "ok"


def test_parquet_reader_without_ids_and_with_hf_style_structs(ray_cluster, tmp_path) -> None:
    structs = [{"bytes": digit_png(i), "path": f"x{i}.png"} for i in range(3)]
    pq.write_table(pa.table({"img": structs}), tmp_path / "hf.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    rows = _rows(read_source(Source(str(tmp_path), kind="parquet", image_column="img"), GREY8))
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 3 and all(r["id"].endswith(("#0", "#1", "#2")) for r in ok)
    bad = [r for r in rows.values() if r["status"] == "error"]
    assert len(bad) == 1 and "Parquet" in bad[0]["error"]


def test_parquet_reader_names_a_missing_image_column(ray_cluster, tmp_path) -> None:
    pq.write_table(pa.table({"pixels": [digit_png(0)]}), tmp_path / "a.parquet")
    rows = _rows(read_source(Source(str(tmp_path / "a.parquet")), GREY8))
    (row,) = rows.values()
    assert row["status"] == "error" and "--image-column" in row["error"]


def test_digits_reader_and_limit(ray_cluster) -> None:
    rows = _rows(read_source(Source("digits", limit=10), GREY8))
    assert len(rows) == 10 and all(r["status"] == "ok" and 0 <= r["label"] <= 9 for r in rows.values())


def test_skip_ids_resume_at_the_reader(ray_cluster, tmp_path) -> None:
    write_digit_folder(tmp_path / "imgs", n=6, broken=False)
    first = _rows(read_source(Source(str(tmp_path / "imgs")), GREY8))
    done = set(list(first)[:4])
    rest = _rows(read_source(Source(str(tmp_path / "imgs")), GREY8, skip_ids=done))
    assert set(rest) == set(first) - done


def test_missing_input_is_a_clear_error(ray_cluster, tmp_path) -> None:
    with pytest.raises(RaydetectError, match="does not exist"):
        read_source(Source(str(tmp_path / "nope")), GREY8)


def test_png_bytes_survive_in_memory_round_trip() -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(digit_png(1)))
    assert np.asarray(img).shape == (8, 8)
