"""The audit at scale: the driver streams per-part counts, never rows; images decoded in the actor
score exactly as the reader's decode and ``Detector.score`` do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray

from raydetect.config import ModelConfig, ResourceConfig, Source
from raydetect.detect import Detector
from raydetect.images import Preprocess
from raydetect.stages.read import decode_rows, read_inputs
from raydetect.stages.runner import AuditJob, run_job
from raydetect.store import output_files
from tests.helpers import BROKEN_FILES, write_digit_folder

GREY8 = Preprocess(resize=8, crop=8, channels=1)


def _batches(ds) -> list[dict[str, np.ndarray]]:
    return list(ds.iter_batches(batch_size=None, batch_format="numpy"))


def test_bytes_decoded_in_the_actor_equal_the_readers_rows(ray_cluster, tmp_path) -> None:
    expected = write_digit_folder(tmp_path / "imgs", n=12)  # broken, empty and non-image files included
    src = Source(str(tmp_path / "imgs"))
    decoded = {r["id"]: r for b in _batches(read_inputs(src, GREY8)[0]) for r in _rows(b)}
    raw = _batches(read_inputs(src, GREY8, decode=False)[0])
    assert all(b["image"].dtype == object for b in raw)  # encoded bytes travel, not float images
    deferred = {r["id"]: r for b in raw for r in _rows(decode_rows(b, GREY8))}
    assert set(deferred) == set(decoded) == set(expected)
    for rid, row in decoded.items():
        assert (deferred[rid]["status"], deferred[rid]["error"]) == (row["status"], row["error"]), rid
        np.testing.assert_array_equal(deferred[rid]["image"], row["image"])
    for name, reason in BROKEN_FILES.items():
        assert reason in deferred[name]["error"]


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["id"]))]


def test_the_audit_driver_receives_per_part_counts_only(ray_cluster, digits_bundle, tmp_path, monkeypatch) -> None:
    """Everything the driver pulls from Ray Data while the job runs is recorded: it must be one
    (rows, inputs) count per written part, never the audited rows (which would grow with the input)."""
    det = Detector.load(digits_bundle)
    write_digit_folder(tmp_path / "imgs", n=70, broken=False)
    pulled: list[tuple[list[str], np.ndarray]] = []  # (columns, the "rows" column if any) of each batch
    real_iter = ray.data.Dataset.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real_iter(self, *args, **kwargs):
            names = list(batch.column_names) if hasattr(batch, "column_names") else list(batch)
            pulled.append((sorted(names), np.asarray(batch["rows"]) if "rows" in names else np.array([])))
            yield batch

    def refuse(self, *args, **kwargs):
        raise AssertionError("the driver materialized a dataset")

    monkeypatch.setattr(ray.data.Dataset, "iter_batches", spy)
    for name in ("take_all", "take", "take_batch", "to_pandas", "iter_rows", "materialize", "to_arrow_refs"):
        monkeypatch.setattr(ray.data.Dataset, name, refuse)
    job = AuditJob(str(tmp_path / "audit"), ModelConfig(name="digits_cnn"), Source(str(tmp_path / "imgs")), det, "bundle")
    summary = run_job(job, ResourceConfig(batch_size=16))

    assert summary.rows_by_status == {"ok": 70} and summary.inputs == 70
    parts = output_files(str(tmp_path / "audit" / "rows"))
    assert pulled and all(names == ["inputs", "rows"] for names, _ in pulled), [names for names, _ in pulled]
    counts = np.concatenate([rows for _, rows in pulled])
    assert counts.sum() == 70 and len(counts) == len(parts) < 70  # one count per part, several images per part
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 70


def test_the_audit_scores_as_detector_score(ray_cluster, digits_bundle, tmp_path) -> None:
    det = Detector.load(digits_bundle)
    write_digit_folder(tmp_path / "imgs", n=20, broken=False)
    job = AuditJob(str(tmp_path / "audit"), ModelConfig(name="digits_cnn"), Source(str(tmp_path / "imgs")), det, "bundle")
    run_job(job, ResourceConfig(batch_size=8))
    rows = pq.read_table(tmp_path / "audit" / "rows").to_pylist()
    files = [str(Path(tmp_path / "imgs" / r["id"])) for r in rows]
    np.testing.assert_allclose([r["score"] for r in rows], det.score(files), atol=1e-5, rtol=0)


def test_actors_draw_the_views_with_the_drivers_secret(ray_cluster, digits_bundle, tmp_path, monkeypatch) -> None:
    """The workers started before RAYDETECT_SECRET was set here, as workers on another node never see
    the driver's environment: the audit must still draw every view with the driver's key."""
    from dataclasses import replace

    from raydetect.explain.views import key_fingerprint
    from raydetect.stages.runner import run_audit

    det = Detector.load(digits_bundle)
    replace(det, attribution={**det.attribution, "jitter": 0.5}).save(tmp_path / "keyed")
    write_digit_folder(tmp_path / "imgs", n=16, broken=False)
    monkeypatch.setenv("RAYDETECT_SECRET", "auditor-a")
    summary, _ = run_audit(Source(str(tmp_path / "imgs")), str(tmp_path / "audit"), str(tmp_path / "keyed"),
                           ResourceConfig(batch_size=8), top=0)  # fmt: skip
    assert summary.config["views_key"] == key_fingerprint(b"auditor-a")
    rows = pq.read_table(tmp_path / "audit" / "rows").to_pylist()
    files = [str(Path(tmp_path / "imgs" / r["id"])) for r in rows]
    keyed = Detector.load(tmp_path / "keyed")  # scores in this process, with this process's secret
    np.testing.assert_allclose([r["score"] for r in rows], keyed.score(files), atol=1e-5, rtol=0)
    monkeypatch.delenv("RAYDETECT_SECRET")
    public = keyed.score(files)
    assert np.abs(np.array([r["score"] for r in rows]) - public).max() > 1e-4  # the key does change the scores
