"""``python -m raydetect``: the command line (``raydetect.cli``)."""

from raydetect.cli import run

run()
