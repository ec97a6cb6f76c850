"""A fixed digits run through the CLI gives the outputs recorded before the architecture refactoring.

``scripts/behaviour.py`` states the tolerances and why (attack rows identical, descriptors within
float precision, anything after a detector fit within the fit's own run-to-run noise), and why a
recording belongs to one CPU kernel family. Re-record a file only with a commit that says which
behaviour changed on purpose, or which new CPU kind it covers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fixed_digits_run_matches_the_recorded_outputs() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/behaviour.py", "compare", "tests/data/behaviour-digits.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "identical up to float tolerance" in proc.stdout
