"""Cluster submission: send any raydetect command to a Ray cluster's job server, follow it.

The entrypoint is ``python -m raydetect <command> ...`` in a runtime environment that ships the
working directory (this checkout), so the cluster runs exactly the code you have. The job server
lives in the Ray dashboard (port 8265); keep it off the public internet and reach it through a
port-forward or SSH tunnel (see README). With token authentication on (RAY_AUTH_MODE=token), the
client reads the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
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


def follow(job_id: str, address: str | None = None, timeout: float | None = None, out: Any = None) -> str:
    """Stream the job's logs as the job server pushes them (a websocket: each line is sent once)
    until the job ends; returns its final status."""
    out = out or sys.stdout
    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        state = str(c.get_job_status(job_id)).split(".")[-1]
        raise RaydetectError(
            f"job {job_id} still {state} after {timeout:.0f} s; follow it with raydetect logs {job_id} --follow"
        ) from None
    except Exception as exc:  # unknown job, or the connection dropped: aiohttp and Ray raise various types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RaydetectError(f"cannot follow job {job_id!r} at {resolve_address(address)}: {first}") from exc
    # The stream closes when the job ends; its status may take a moment to say so.
    deadline = time.monotonic() + 30
    while True:
        state = str(c.get_job_status(job_id)).split(".")[-1]
        if state in TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Paths the cluster will not see

# Options (Click parameter names) of the submittable commands that name files or folders.
INPUT_PARAMS = ("input", "data", "attacks_dir", "features_dir", "detector", "weights", "clean", "adversarial")
OUTPUT_PARAMS = ("out",)
POSITIONAL = ("input", "attacks_dir", "features_dir")
FIX = "give an absolute path on storage every node mounts, or an s3:// or gs:// URI"


def _values(value: Any) -> Iterator[str]:
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is None:
            continue
        text = str(v)
        # --adversarial NAME=PATH: the path is after the first '=' when the name has no '/'.
        name, sep, rest = text.partition("=")
        yield rest if sep and "/" not in name and "://" not in name else text


def check_paths(command: str, params: dict[str, Any], working_dir: str) -> list[str]:
    """Refuse local paths the cluster will not see; return notes on the ones it may see.

    On the cluster the job runs in a copy of ``working_dir`` without what Ray leaves out
    (:data:`EXCLUDES`, Ray's defaults, ``.gitignore`` and ``.rayignore``). A relative input must
    be in that copy; a relative output would land in each node's temporary copy and be lost.
    Absolute paths are taken as shared storage (they cannot be checked from here).
    """
    root = Path(working_dir).expanduser().resolve()
    problems: list[str] = []
    notes: list[str] = []
    for param in (*INPUT_PARAMS, *OUTPUT_PARAMS):
        for text in _values(params.get(param)):
            if "://" in text or (text == "digits" and param in ("input", "data")):
                continue
            label = f"{command} {param.upper() if param in POSITIONAL else '--' + param.replace('_', '-')}"
            path = Path(text).expanduser()
            if path.is_absolute():
                notes.append(f"{label} {text} is used as is on the cluster: it must be on storage every node mounts")
                continue
            if param in OUTPUT_PARAMS:
                problems.append(f"{label} {text}: relative, so the job would write into its temporary copy of the working dir")
                continue
            reason = _not_shipped(root, text)
            if reason:
                problems.append(f"{label} {text}: {reason}")
    if problems:
        raise RaydetectError(f"{'; '.join(problems)}. The cluster will not see these local paths: {FIX}")
    return notes


def _not_shipped(root: Path, rel: str) -> str | None:
    """Why Ray will not upload ``root/rel`` with the working dir, or None when it will."""
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        return f"outside the working dir {root}, the only folder shipped"
    if not target.exists():
        return f"not in the working dir {root}"
    dropped = _dropped_by_ray(root, target)
    if dropped is not None:
        what = "it is" if dropped == target else f"{dropped.relative_to(root)}{'/' if dropped.is_dir() else ''} is"
        return f"not uploaded ({what} git-ignored or excluded)"
    return None


def _dropped_by_ray(root: Path, target: Path, limit: int = 20000) -> Path | None:
    """The first path at or under ``target`` that Ray leaves out of the working dir upload.

    Mirrors Ray's own walk (``ray._private.runtime_env.packaging``): at each folder, that
    folder's .gitignore and .rayignore add patterns, matched relative to it.
    """
    try:
        from ray._private import ray_constants
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files
    except ImportError:  # another Ray: ask git instead (covers .gitignore, not Ray's own lists)
        return _dropped_by_git(root, target)
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    excludes = [_get_excludes(root, [*ray_constants.get_runtime_env_default_excludes(), *EXCLUDES])]
    quiet = _QuietLogger()
    chain = [root, *reversed([p for p in target.parents if root in p.parents]), target] if target != root else [root]
    for path in chain:
        if path.is_dir():
            excludes = excludes + get_excludes_from_ignore_files(path, include_gitignore=include_gitignore, logger=quiet)
        if path != root and any(e(path) for e in excludes):
            return path
    if not target.is_dir():
        return None
    seen = 0
    stack = [(target, excludes)]
    while stack and seen < limit:
        folder, excl = stack.pop()
        for child in sorted(folder.iterdir()):
            if child.name.startswith((".", "_")):
                continue  # readers skip hidden files anyway
            seen += 1
            child_excl = excl + get_excludes_from_ignore_files(child, include_gitignore, quiet) if child.is_dir() else excl
            if any(e(child) for e in child_excl):
                return child
            if child.is_dir():
                stack.append((child, child_excl))
    return None


def _dropped_by_git(root: Path, target: Path) -> Path | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(target)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return target if done.returncode == 0 else None


class _QuietLogger:
    """Ray's packaging helpers log each ignore file they read; not worth a line here."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    warning = error = debug = info
