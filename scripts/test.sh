#!/usr/bin/env bash
# Set up (if needed) and run the test suite: lint, then every test (the slow end-to-end ones too).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check raydetect tests bench jobs
python -m pytest -q "$@"
