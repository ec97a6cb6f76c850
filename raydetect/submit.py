"""Cluster submission: send any raydetect command to a Ray cluster's job server, follow it.

The entrypoint is ``python -m raydetect <command> ...`` in a runtime environment that ships the
working directory (this checkout), so the cluster runs exactly the code you have. The job server
lives in the Ray dashboard (port 8265); keep it off the public internet and reach it through a
port-forward or SSH tunnel (see README). With token authentication on (RAY_AUTH_MODE=token), the
client reads the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from raydetect.errors import RaydetectError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Never upload these with the working directory: environments, outputs, caches, VCS data.
EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.parquet",
    ".ray_train",
    "*.egg-info",
]
SUBMITTABLE = ("attack", "features", "train", "audit", "reproduce")


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("RAY_JOB_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def client(address: str | None) -> Any:
    """A JobSubmissionClient, or a clear error saying what to check."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise RaydetectError("job submission needs ray[default]: pip install 'ray[default]'") from exc
    addr = resolve_address(address)
    try:
        return JobSubmissionClient(addr)
    except Exception as exc:  # connection refused, auth failures, bad URL: all raised as various types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RaydetectError(
            f"cannot reach the Ray job server at {addr}: {first}. Is the cluster up and the dashboard port "
            "forwarded (ray dashboard cluster.yaml, or kubectl port-forward svc/<cluster>-head-svc 8265)? "
            "With token auth, set RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN or ~/.ray/auth_token)."
        ) from exc


def package_requirements() -> list[str]:
    """raydetect's own dependencies (not Ray, which the cluster has), for a bare Ray image."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("raydetect") or []
    except PackageNotFoundError as exc:
        raise RaydetectError("--with-deps reads raydetect's installed metadata; pip install -e . first") from exc
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r and not r.lower().startswith("ray")]


def runtime_env(working_dir: str, pip: Sequence[str] = (), env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"working_dir": working_dir, "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = list(pip)
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def entrypoint(args: Sequence[str]) -> str:
    if not args or args[0] not in SUBMITTABLE:
        raise RaydetectError(
            f"submit runs one of: {', '.join(SUBMITTABLE)}; e.g. raydetect submit -- audit DATA --detector BUNDLE --out OUT"
        )
    return "python -m raydetect " + " ".join(shlex.quote(a) for a in args)


def submit(
    args: Sequence[str],
    address: str | None = None,
    working_dir: str = ".",
    pip: Sequence[str] = (),
    env_vars: dict[str, str] | None = None,
    job_id: str | None = None,
) -> str:
    """Submit ``raydetect <args>`` as a Ray job; returns the job id."""
    if not os.path.isdir(working_dir):
        raise RaydetectError(f"working directory does not exist: {working_dir}")
    c = client(address)
    try:
        return c.submit_job(
            entrypoint=entrypoint(args), runtime_env=runtime_env(working_dir, pip, env_vars), submission_id=job_id
        )
    except RaydetectError:
        raise
    except Exception as exc:
        raise RaydetectError(f"the job server refused the job: {str(exc).strip().splitlines()[0]}") from exc


def status(job_id: str, address: str | None = None) -> str:
    try:
        return str(client(address).get_job_status(job_id))
    except RaydetectError:
        raise
    except Exception as exc:
        raise RaydetectError(f"no job {job_id!r} at {resolve_address(address)}: {str(exc).strip().splitlines()[0]}") from exc


def logs(job_id: str, address: str | None = None) -> str:
    try:
        return str(client(address).get_job_logs(job_id))
    except RaydetectError:
        raise
    except Exception as exc:
        raise RaydetectError(f"no logs for job {job_id!r}: {str(exc).strip().splitlines()[0]}") from exc


def stop(job_id: str, address: str | None = None) -> bool:
    return bool(client(address).stop_job(job_id))


def follow(job_id: str, address: str | None = None, poll: float = 2.0, timeout: float | None = None, out: Any = None) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    out = out or sys.stdout
    c = client(address)
    shown = 0
    start = time.monotonic()
    while True:
        text = str(c.get_job_logs(job_id))
        if len(text) > shown:
            out.write(text[shown:])
            out.flush()
            shown = len(text)
        state = str(c.get_job_status(job_id)).split(".")[-1]
        if state in TERMINAL:
            text = str(c.get_job_logs(job_id))
            out.write(text[shown:])
            return state
        if timeout is not None and time.monotonic() - start > timeout:
            raise RaydetectError(
                f"job {job_id} still {state} after {timeout:.0f} s; follow it with raydetect logs {job_id} --follow"
            )
        time.sleep(poll)
