"""The console pieces on their own: the progress line and the stderr filter (no Ray)."""

from __future__ import annotations

import io
import os
import re

from raydetect.stages import console
from raydetect.stages.console import ConsoleFilter, Progress


def test_progress_lines_count_rate_and_eta(monkeypatch) -> None:
    clock = iter([0.0, 10.0, 20.0, 40.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = Progress("audit", 100, "images", stream=out, interval=5)
    p.update(20)  # t=10: 2.0/s, 80 left -> ETA 40s
    p.update(30)  # t=20: 50 done, 2.5/s -> ETA 20s
    p.update(50)  # t=40: all done, no ETA
    p.close()  # nothing new: no second last line
    assert out.getvalue().splitlines() == [
        "audit: 20/100 images (20%), 2.0/s, 10s, ETA 40s",
        "audit: 50/100 images (50%), 2.5/s, 20s, ETA 20s",
        "audit: 100/100 images (100%), 2.5/s, 40s",
    ]


def test_progress_without_a_total_and_with_long_runs(monkeypatch) -> None:
    clock = iter([0.0, 4000.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = Progress("features", None, stream=out, interval=30)
    p.update(8000)
    assert out.getvalue() == "features: 8000 inputs, 2.0/s, 1h06m\n"


def test_console_filter_drops_ray_notices_and_keeps_the_rest(capfd) -> None:
    f = ConsoleFilter()
    os.write(2, b"keep me\n")
    os.write(2, b"[2026-11-25 17:05:22,170 E 25366 25366] core_worker.cc:2465: Actor with class name: 'MapWorker(X)' and ID: "
                b"'55' has constructor arguments in the object store and max_restarts > 0. If the arguments...\n")  # fmt: skip
    os.write(2, b"error: a real problem\n")
    os.write(1, b"\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: c8 with address\n")
    os.write(1, b"audit: 120 inputs (ok: 120) in 35 s\n")
    f.close()
    os.write(2, b"after close\n")
    out, err = capfd.readouterr()
    assert err.splitlines() == ["keep me", "error: a real problem", "after close"]
    assert out.splitlines() == ["audit: 120 inputs (ok: 120) in 35 s"]
    assert not re.search("core_worker|raylet", out + err)
