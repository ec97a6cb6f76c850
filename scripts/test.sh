#!/usr/bin/env bash
# Set up (if needed) and run the test suite: lint, then the fast default (every test not marked slow;
# about 12 minutes on 2 cores). `bash scripts/test.sh --all` adds the slow end-to-end ones (the demo,
# multi-node clusters, `ray job submit`, the recorded digits run: about 15 minutes more). Other
# arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`. The 20 slowest tests are listed
# at the end, so a CI log shows where the suite's time goes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check raydetect tests bench jobs scripts
# The audit report's browser test needs a headless Chromium; install Debian's where it is missing
# (as root, quietly, never fatal: without it that one test skips and says why).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 ||
    echo "test: could not install chromium; the browser test will skip"
fi
if [ "${1:-}" = "--all" ]; then
  shift
  python -m pytest -q --durations=20 "$@"
else
  python -m pytest -q --durations=20 -m "not slow" "$@"
fi
