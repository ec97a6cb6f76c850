"""Ray job entrypoint for `raydetect features`: ray job submit --working-dir . -- python jobs/features.py --help"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shipped working directory

from raydetect.cli import run_job

if __name__ == "__main__":
    run_job("features")
