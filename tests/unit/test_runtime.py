"""The allocator settings of model processes: freed memory is kept for speed, and handed back once
RSS creeps past its level after warm-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raydetect.models.runtime import HeapTrim

MIB = 2**20
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def _churn(mib: int) -> None:
    """Allocate, touch and free ``mib`` MiB; with the allocator tuned they stay resident."""
    block = np.ones(mib * MIB, np.uint8)
    del block


SCENARIO = """
import numpy as np
from raydetect.models.runtime import HeapTrim, _private_rss_bytes, tune_allocator
MIB = 2**20

def _churn(mib):
    block = np.ones(mib * MIB, np.uint8)
    del block

tune_allocator()  # what loading a model does: freed blocks stay in the heap
trim = HeapTrim(warmup=1, slack=0.03, settle=3)
trim()  # warm-up: the level is today's RSS
level = trim.level
_churn(400)
crept = _private_rss_bytes()
assert crept > level + 300 * MIB, "the tuned allocator kept the freed 400 MiB resident"
trim()
assert trim.trims == 1 and _private_rss_bytes() < crept - 300 * MIB, "handed back"
trim()
assert trim.trims == 1, "back under the level: nothing to do"
# A larger batch right after a trim (large block, small block, large block): the level rises.
_churn(400)
trim()
assert trim.trims == 1 and trim.level > level + 300 * MIB, "level rises"
for _ in range(5):
    _churn(400)
    trim()
assert trim.trims == 1, "no trim batch after batch"
_churn(900)  # far over the risen level, long after the last trim: trimmed again
trim()
assert trim.trims == 2, "trimmed again"
"""


def test_heap_trim_hands_back_crept_memory_and_lets_needed_memory_stay() -> None:
    """In a fresh process: a long test session's heap already holds free memory to reuse."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAYDETECT_NO_MALLOC_TUNING", "RAYDETECT_NO_HEAP_TRIM")}
    done = subprocess.run([sys.executable, "-c", SCENARIO], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]


def test_heap_trim_is_off_with_the_allocator_tuning_off(monkeypatch) -> None:
    monkeypatch.setenv("RAYDETECT_NO_MALLOC_TUNING", "1")
    trim = HeapTrim(warmup=0)
    _churn(64)
    trim()
    assert trim.calls == 0 and trim.trims == 0
