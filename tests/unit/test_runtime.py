"""The allocator settings of model processes: freed memory is kept for speed, and handed back once
RSS creeps past its level after warm-up."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from raydetect.models.runtime import HeapTrim, _rss_bytes, tune_allocator

MIB = 2**20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def _churn(mib: int) -> None:
    """Allocate, touch and free ``mib`` MiB; with the allocator tuned they stay resident."""
    block = np.ones(mib * MIB, np.uint8)
    del block


def test_heap_trim_hands_back_crept_memory_and_lets_needed_memory_stay(monkeypatch) -> None:
    monkeypatch.delenv("RAYDETECT_NO_MALLOC_TUNING", raising=False)
    tune_allocator()  # what loading a model does: freed blocks stay in the heap
    trim = HeapTrim(warmup=1, slack=0.03, settle=3)
    trim()  # warm-up: the level is today's RSS
    level = trim.level
    _churn(400)
    crept = _rss_bytes()
    assert crept > level + 300 * MIB  # the tuned allocator kept the freed 400 MiB resident
    trim()
    assert trim.trims == 1 and _rss_bytes() < crept - 300 * MIB  # handed back
    trim()
    assert trim.trims == 1  # back under the level: nothing to do

    # A larger batch right after a trim (as an actor saw: large block, small block, large block):
    # the work needs that memory, so the level rises instead of trimming every other batch.
    _churn(400)
    trim()
    assert trim.trims == 1 and trim.level > level + 300 * MIB
    for _ in range(5):
        _churn(400)
        trim()
    assert trim.trims == 1

    _churn(900)  # far over the risen level, long after the last trim: trimmed again
    trim()
    assert trim.trims == 2


def test_heap_trim_is_off_with_the_allocator_tuning_off(monkeypatch) -> None:
    monkeypatch.setenv("RAYDETECT_NO_MALLOC_TUNING", "1")
    trim = HeapTrim(warmup=0)
    _churn(64)
    trim()
    assert trim.calls == 0 and trim.trims == 0
