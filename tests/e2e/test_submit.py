"""A real Ray head with its job server; audit jobs sent by `raydetect submit` and by `ray job submit`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raydetect.cli import app
from tests.helpers import write_digit_folder

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory):
    """`ray start --head --block` on its own ports and temp dir; stopped by killing its process group."""
    temp = Path("/tmp") / f"rd-e2e-{os.getpid()}"  # short: Ray's socket paths must fit 107 bytes
    port, dash = _free_port(), _free_port()
    # Job entrypoints run `python`: make it this environment's interpreter, as on a real cluster image.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")  # noqa: SIM115 (lives as long as the head)
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats",
         f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    # The client side must match the head's auth mode, but only for this module: a leaked
    # RAY_AUTH_MODE would break later tests' connections to the token-auth local cluster.
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 180
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the Ray head did not come up; see {log.name}") from None
                time.sleep(1)
        yield address
    finally:
        mp.undo()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _check_rows(out: Path, expected: dict[str, str]) -> None:
    rows = pq.read_table(out / "rows").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all((r["status"] == "ok") == (expected[r["id"]] == "ok") for r in rows)
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_audit_via_raydetect_submit_and_via_ray_job_submit(job_server, digits_bundle, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    expected = write_digit_folder(tmp_path / "imgs", n=10)
    cache = os.environ["RAYDETECT_CACHE"]

    out1 = tmp_path / "audit-submit"
    result = CliRunner().invoke(
        app,
        ["submit", "--address", job_server, "--working-dir", str(ROOT), "--env", f"RAYDETECT_CACHE={cache}", "--timeout", "600",
         "--", "audit", str(tmp_path / "imgs"), "--detector", str(digits_bundle), "--out", str(out1)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output
    _check_rows(out1, expected)

    out2 = tmp_path / "audit-ray-cli"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", job_server, "--working-dir", str(ROOT),
         "--runtime-env-json", f'{{"env_vars": {{"RAYDETECT_CACHE": "{cache}"}}, "excludes": [".venv", ".git", "runs"]}}',
         "--", "python", "jobs/audit.py", str(tmp_path / "imgs"), "--detector", str(digits_bundle), "--out", str(out2)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_rows(out2, expected)
