"""The console as a user sees it: each command in its own process, with its own Ray, output captured.

Without -v: raydetect's lines only (a progress line per job, a summary); none of Ray's own warnings
(token-auth notice, actor-restart notice, deprecations, Ray Data's progress blocks, Train's
checkpoint lines, forwarded worker logs). With -v they come back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lines of Ray's, never raydetect's: its log levels and sources, worker prefixes, its notices.
RAY_LINE = re.compile(
    r"WARNING|\(raylet\)|pid=\d+\)|Deprecat|[Tt]oken auth|core_worker\.cc|[Cc]heckpoint|streaming_executor|logging_progress"
    r"|Execution plan|ray-data|Ray deduplicates|\.py:\d+ --"
)


def raydetect(*args: str) -> list[str]:
    """Run `python -m raydetect ARGS` as a user would (no terminal); its stdout and stderr lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDETECT_VERBOSE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "raydetect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(lines[-40:])
    return lines


# raydetect's own log lines (cli.py's format): its warnings, e.g. too few calibration rows, are the
# user's business, not Ray's chatter.
OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


def ray_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if RAY_LINE.search(line) and not OWN_LINE.match(line)]


@pytest.mark.slow
def test_attack_console_is_quiet_unless_verbose(tmp_path) -> None:
    lines = raydetect("attack", "digits", "--model", "digits_cnn", "--eps", "0.3", "--mode", "untargeted", "--limit", "24",
                      "--out", str(tmp_path / "a"))  # fmt: skip
    assert ray_lines(lines) == [], "\n".join(lines)
    progress = [
        line for line in lines if re.fullmatch(r"attack: \d+/24 images \(\d+%\), [\d.]+/s, [\dhms]+(, ETA [\dhms]+)?", line)
    ]
    assert progress and progress[-1].startswith("attack: 24/24 images (100%)"), lines
    assert len(progress) == len(set(progress)), "the same progress line twice"
    assert any(line.startswith("attack: ") and "rows in" in line for line in lines), lines
    verbose = raydetect("-v", "attack", "digits", "--model", "digits_cnn", "--eps", "0.3", "--mode", "untargeted",
                        "--limit", "8", "--out", str(tmp_path / "b"))  # fmt: skip
    assert ray_lines(verbose), "\n".join(verbose)  # the filter hides what Ray really prints


@pytest.mark.slow
def test_demo_console_has_no_ray_lines(tmp_path) -> None:
    """scripts/demo.sh on digits, smaller: reproduce (Ray Data and Ray Train), attack, export, audit."""
    out = tmp_path / "demo"
    # One detector kind: the Ray Train runs (and their console) are the same kind, at half the fits.
    lines = raydetect("reproduce", "--model", "digits_cnn", "--data", "digits", "--limit", "80", "--eps", "0.3",
                      "--detector", "lr", "--out", str(out))  # fmt: skip
    lines += raydetect("attack", "digits", "--model", "digits_cnn", "--offset", "80", "--limit", "30", "--eps", "0.3",
                       "--strengths", "bim", "--out", str(out / "audit-set" / "attacks"))  # fmt: skip
    lines += raydetect("export", str(out / "audit-set" / "attacks"), "--out", str(out / "audit-set" / "images"))
    lines += raydetect("audit", str(out / "audit-set" / "images"), "--detector", str(out / "corrected" / "detector"),
                       "--out", str(out / "audit"))  # fmt: skip
    assert ray_lines(lines) == [], "\n".join(lines)
    assert any(line.startswith("report: ") for line in lines) and any(line.startswith("audit: ") for line in lines)


def test_version_and_completion() -> None:
    from typer.testing import CliRunner

    from raydetect import __version__
    from raydetect.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"raydetect {__version__}\n"
    # As users get it: the installed `raydetect` script in a fresh process (in-process, after other
    # tests, it once exited 1).
    script = Path(sys.executable).with_name("raydetect")
    if not script.exists():
        pytest.skip(f"no installed raydetect script beside {sys.executable}")
    # Typer detects the shell from the parent processes, which a test runner need not have (it printed
    # "Shell  not supported" under a detached pytest); its test switch makes the shell the argument.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run([str(script), "--show-completion", "bash"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "_RAYDETECT_COMPLETE" in done.stdout.upper(), done.stdout + done.stderr
