from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source
from raydetect.stages.runner import AttackJob, FeatureJob, JobSummary, run_job
from raydetect.store import output_files, read_output
from tests.helpers import BROKEN_FILES, write_digit_folder

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(name="digits_cnn")
ATTACKS = [AttackConfig(eps=0.3, steps=5), AttackConfig(mode="second", eps=0.3, steps=5)]
RES = ResourceConfig(batch_size=8)


def run_attack_job(source: Source, out: str, model: ModelConfig, attacks: list[AttackConfig], res: ResourceConfig) -> JobSummary:
    return run_job(AttackJob(out, model, source, attacks), res)


def run_feature_job(attacks_dir: str, out: str, model: ModelConfig, attribution: AttributionConfig, features: FeatureConfig,
                    res: ResourceConfig) -> JobSummary:  # fmt: skip
    return run_job(FeatureJob(out, model, attacks_dir, attribution, features), res)


def _raw_ids(out: Path) -> list[str]:
    table = read_output(str(out), columns=["id"], dedupe_on=None)
    return table.column("id").to_pylist()


def test_attack_then_feature_job_accounts_for_every_input(ray_cluster, tmp_path) -> None:
    expected = write_digit_folder(tmp_path / "imgs", n=18)
    attacks_out, feats_out = tmp_path / "attacks", tmp_path / "features"

    s1 = run_attack_job(Source(str(tmp_path / "imgs")), str(attacks_out), MODEL, ATTACKS, RES)
    rows = read_output(str(attacks_out)).to_pylist()
    ids = _raw_ids(attacks_out)
    assert len(ids) == len(set(ids)) and s1.duplicate_ids == 0
    clean = {r["id"]: r for r in rows if r["kind"] == "clean"}
    assert set(clean) == set(expected)  # every input file exactly once
    for name, status in expected.items():
        assert clean[name]["status"] == status
    for name in BROKEN_FILES:
        assert clean[name]["error"], name
    adv = [r for r in rows if r["kind"] == "adversarial"]
    attacked = {r["id"] for r in clean.values() if r["status"] == "ok" and r["correct"]}
    assert {r["pair_id"] for r in adv} == attacked
    assert len(adv) == len(ATTACKS) * len(attacked)
    assert all(r["linf"] <= 0.3 + 1e-6 for r in adv)

    s2 = run_feature_job(str(attacks_out), str(feats_out), MODEL, AttributionConfig(n_steps=4), FeatureConfig(quantiles=8), RES)
    feats = read_output(str(feats_out)).to_pylist()
    assert sorted(r["id"] for r in feats) == sorted(r["id"] for r in rows)
    assert s2.duplicate_ids == 0 and s2.rows_total == len(rows)
    for r in feats:
        assert r["status"] in ("ok", "error", "skipped")
        assert (r["status"] == "ok") == (r["error"] == "")

    # Re-running both jobs finds everything done and writes nothing.
    again = run_attack_job(Source(str(tmp_path / "imgs")), str(attacks_out), MODEL, ATTACKS, RES)
    assert again.rows_written == 0 and again.skipped_done == len(expected)
    again = run_feature_job(
        str(attacks_out), str(feats_out), MODEL, AttributionConfig(n_steps=4), FeatureConfig(quantiles=8), RES
    )
    assert again.rows_written == 0 and again.rows_total == len(rows)

    # Resuming with another configuration would mix rows of two experiments: refused, nothing written.
    from raydetect.errors import RaydetectError

    with pytest.raises(RaydetectError, match="different attacks"):
        run_attack_job(Source(str(tmp_path / "imgs")), str(attacks_out), MODEL, [AttackConfig(eps=0.1)], RES)
    with pytest.raises(RaydetectError, match="different features"):
        run_feature_job(str(attacks_out), str(feats_out), MODEL, AttributionConfig(n_steps=4), FeatureConfig(quantiles=16), RES)
    assert read_output(str(feats_out)).num_rows == len(rows)


def test_a_killed_job_resumes_with_no_missing_and_no_duplicate_ids(ray_cluster, tmp_path) -> None:
    out = tmp_path / "attacks"
    n = 240
    script = (
        "import sys; from raydetect.stages.runner import AttackJob, run_job; from raydetect.config import *;"
        f"run_job(AttackJob({str(out)!r}, ModelConfig(name='digits_cnn'), Source('digits', limit={n}),"
        " [AttackConfig(eps=0.3, steps=60)]), ResourceConfig(batch_size=8), address=sys.argv[1])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, ray_cluster.address_info["address"]],
            env=env,
            cwd=ROOT,
            stderr=sink,
            stdout=sink,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 600  # generous: a busy 2-core machine slows actor start-up a lot
        while time.time() < deadline and len(output_files(str(out))) < 2 and proc.poll() is None:
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-3000:]
        assert proc.poll() is None, f"the driver exited (rc {proc.returncode}) before it could be killed:\n{tail}"
        assert output_files(str(out)), "no part file appeared in time"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-job, as on a lost node or Ctrl-C -9
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    partial = {i.split("|")[0] for i in _raw_ids(out)}
    assert 0 < len(partial) < n

    summary = run_attack_job(Source("digits", limit=n), str(out), MODEL, [AttackConfig(eps=0.3, steps=60)], RES)
    assert summary.skipped_done == len(partial)
    ids = _raw_ids(out)
    assert len(ids) == len(set(ids)), "duplicate ids after resume"
    clean = {i for i in ids if "|" not in i}
    assert clean == {f"digits-test-{i}" for i in range(n)}
    assert not [p for p in Path(out).iterdir() if p.name.endswith(".tmp")]


def test_paper_protocol_feature_job_groups_pairs(ray_cluster, tmp_path) -> None:
    attacks_out = tmp_path / "attacks"
    run_attack_job(Source("digits", limit=24), str(attacks_out), MODEL, [AttackConfig(method="paper_bim", eps=0.3)], RES)
    s = run_feature_job(
        str(attacks_out),
        str(tmp_path / "f"),
        MODEL,
        AttributionConfig(n_steps=4, baseline="pair"),
        FeatureConfig(quantiles=8),
        RES,
    )
    rows = read_output(str(tmp_path / "f")).to_pylist()
    ok_adv = [r for r in rows if r["kind"] == "adversarial" and r["status"] == "ok"]
    clean_twins = [r for r in rows if r["kind"] == "clean" and r["attack"]]
    assert len(ok_adv) == len(clean_twins) > 0
    assert s.duplicate_ids == 0
    # Every attacked image is accounted for, also those without a successful twin (skipped).
    attacked = read_output(str(attacks_out)).to_pylist()
    assert {r["pair_id"] for r in rows} == {r["pair_id"] for r in attacked}
    lonely = {r["pair_id"] for r in attacked if r["kind"] == "clean"} - {r["pair_id"] for r in ok_adv}
    assert all(r["status"] == "skipped" for r in rows if r["pair_id"] in lonely)


@pytest.mark.parametrize("bad", ["cuda"])
def test_gpu_request_on_a_cpu_cluster_is_refused(ray_cluster, tmp_path, bad) -> None:
    from raydetect.errors import RaydetectError

    with pytest.raises(RaydetectError, match="GPU"):
        run_attack_job(Source("digits", limit=4), str(tmp_path / "a"), MODEL, ATTACKS, ResourceConfig(gpus_per_actor=1))
