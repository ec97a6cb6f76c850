#!/usr/bin/env bash
# Set up (if needed) and run the test suite: lint, then every test (the slow end-to-end ones too).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check raydetect tests bench jobs scripts
# The audit report's browser test needs a headless Chromium; install Debian's where it is missing
# (as root, quietly, never fatal: without it that one test skips and says why).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 ||
    echo "test: could not install chromium; the browser test will skip"
fi
python -m pytest -q "$@"
