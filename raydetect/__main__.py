from raydetect.cli import run

run()
