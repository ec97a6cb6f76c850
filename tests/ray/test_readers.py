from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydetect.config import Source
from raydetect.errors import RaydetectError
from raydetect.images import Preprocess, digits_split
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


# WebDataset shards and Hugging Face's Parquet layout ------------------------------------------


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    import tarfile

    with tarfile.open(**({"fileobj": path} if isinstance(path, io.BytesIO) else {"name": path}), mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_account_for_every_sample(ray_cluster, tmp_path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "train-000.tar", [
        ("s000.png", digit_png(0)), ("s000.cls", b"0"),
        ("s001.jpg", digit_png(1, "CMYK")), ("s001.cls", b"1"), ("s001.json", b"{}"),
        ("s002.png", b"\x89PNG\r\n\x1a\n corrupt"), ("s002.cls", b"2"),  # a corrupt member
        ("s003.json", b"{}"),  # no image member
        ("dir/s004.png", digit_png(4)), ("dir/s004.cls", b"four"),  # label that is not a number
    ])  # fmt: skip
    # Keys end at the first dot of the file name: "a.b.png" is field "b.png" of sample "a".
    _tar(shards / "train-001.tar", [("a.b.png", digit_png(5)), ("a.b.cls", b"5"), ("c.png", digit_png(6))])
    (shards / "train-002.tar").write_bytes(b"not a tar archive at all" * 40)
    whole = io.BytesIO()
    _tar(whole, [("t0.png", digit_png(7)), ("t1.png", digit_png(8)), ("t2.png", digit_png(9))])
    # Each member is a 512-byte header and one 512-byte data block: cut inside the third image's data.
    (shards / "train-003.tar").write_bytes(whole.getvalue()[: 2 * 1024 + 512 + 40])

    rows = _rows(read_source(Source(str(shards)), GREY8))
    status = {rid: r["status"] for rid, r in rows.items()}
    assert status == {
        "train-000.tar#s000": "ok", "train-000.tar#s001": "ok", "train-000.tar#s002": "error",
        "train-000.tar#s003": "error", "train-000.tar#dir/s004": "error",
        "train-001.tar#a": "ok", "train-001.tar#c": "ok",
        "train-002.tar": "error",
        "train-003.tar#t0": "ok", "train-003.tar#t1": "ok", "train-003.tar#t2": "error",
    }  # fmt: skip
    assert rows["train-000.tar#s001"]["label"] == 1 and rows["train-001.tar#a"]["label"] == 5
    assert rows["train-001.tar#c"]["label"] == -1
    assert "corrupt" in rows["train-000.tar#s002"]["error"]
    assert "no image member" in rows["train-000.tar#s003"]["error"] and "json" in rows["train-000.tar#s003"]["error"]
    assert "not an integer" in rows["train-000.tar#dir/s004"]["error"]
    assert "tar" in rows["train-002.tar"]["error"] and "tar" in rows["train-003.tar#t2"]["error"]
    # The decoded image is the digit itself.
    (_, _), (x, _) = digits_split()
    assert np.allclose(rows["train-000.tar#s000"]["image"], np.rint(x[0] * 255) / 255, atol=1e-6)


def test_webdataset_resume_skips_samples(ray_cluster, tmp_path) -> None:
    _tar(tmp_path / "a.tar", [(f"k{i}.png", digit_png(i)) for i in range(5)])
    first = _rows(read_source(Source(str(tmp_path / "a.tar")), GREY8))
    rest = _rows(read_source(Source(str(tmp_path / "a.tar")), GREY8, skip_ids={"a.tar#k1", "a.tar#k3"}))
    assert set(rest) == set(first) - {"a.tar#k1", "a.tar#k3"}


def test_hugging_face_parquet_layout_with_corrupt_cells(ray_cluster, tmp_path) -> None:
    # How `datasets` stores an Image feature: a struct {"bytes", "path"} per row, beside a ClassLabel.
    cells = [{"bytes": digit_png(i), "path": f"img{i}.png"} for i in range(4)]
    cells.append({"bytes": b"garbage bytes", "path": "bad.png"})  # corrupt
    cells.append({"bytes": None, "path": "elsewhere/x.png"})  # path only: bytes not in the file
    table = pa.table({"image": cells, "label": [0, 1, 2, 3, 4, 5]})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet", row_group_size=4)
    rows = _rows(read_source(Source(str(tmp_path / "data")), GREY8))  # kind and column found without flags
    assert len(rows) == 6
    by_row = {int(rid.rsplit("#", 1)[1]): r for rid, r in rows.items()}
    assert [by_row[i]["status"] for i in range(6)] == ["ok"] * 4 + ["error"] * 2
    assert [by_row[i]["label"] for i in range(6)] == list(range(6))
    assert "not an image" in by_row[4]["error"]
    assert "no bytes" in by_row[5]["error"] and "elsewhere/x.png" in by_row[5]["error"]


# A ray.data.Dataset handed over from Python ----------------------------------------------------


def test_dataset_of_decoded_arrays_and_its_errors(ray_cluster) -> None:
    import ray

    from raydetect.stages.read import DatasetSource, read_dataset

    (_, _), (x, _) = digits_split()
    arrays = [np.rint(x[i, 0] * 255).astype(np.uint8) for i in range(3)]
    items = [{"key": f"a{i}", "pixels": a} for i, a in enumerate(arrays)]
    items.append({"key": "float", "pixels": arrays[0].astype(np.float32)})  # not uint8: an error row, not a crash
    rows = {}
    for item in items:  # one dataset per dtype: a column holds one type
        ds = ray.data.from_items([item])
        rows.update(_rows(read_dataset(DatasetSource(ds, image_column="pixels", id_column="key"), GREY8)))
    assert [rows[f"a{i}"]["status"] for i in range(3)] == ["ok"] * 3
    assert np.allclose(rows["a1"]["image"], np.rint(x[1] * 255) / 255, atol=1e-6)
    assert rows["float"]["status"] == "error" and "uint8" in rows["float"]["error"]
    with pytest.raises(RaydetectError, match="id column"):
        read_dataset(DatasetSource(ray.data.from_items(items[:1]), image_column="pixels"), GREY8)


def test_audit_of_a_ray_dataset(ray_cluster, digits_bundle, tmp_path) -> None:
    import ray

    from raydetect.stages.runner import run_audit

    items = [{"id": f"img{i}", "image": digit_png(i), "label": i % 10} for i in range(10)]
    items.append({"id": "broken", "image": b"\x89PNG\r\n\x1a\n truncated", "label": 0})
    summary, report = run_audit(ray.data.from_items(items), str(tmp_path / "audit"), str(digits_bundle))
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "audit" / "rows").to_pylist()}
    assert set(rows) == {it["id"] for it in items}
    assert rows["broken"]["status"] == "error" and all(rows[f"img{i}"]["status"] == "ok" for i in range(10))
    assert all(0 <= rows[f"img{i}"]["score"] <= 1 for i in range(10))
    assert summary.rows_total == 11 and summary.duplicate_ids == 0 and report.endswith("report.md")
    again, _ = run_audit(ray.data.from_items(items), str(tmp_path / "audit"), str(digits_bundle))
    assert again.rows_written == 0 and again.skipped_done == 11
