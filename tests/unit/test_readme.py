"""The README is for users: short, the audit command on its first screen, and every `raydetect ...`
command in it parses with the real CLI (options, choices and types; nothing runs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

try:  # typer vendors its click from 0.16 on
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

from raydetect.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands(text: str) -> list[str]:
    """Every `raydetect ...` command of the text's bash blocks, and of its inline code spans."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            found += [part.strip() for part in line.split("&&") if part.strip().startswith("raydetect ")]
    found += [c for c in re.findall(r"`(raydetect [^`]+)`", text) if " --" in c]  # commands, not mentions
    return found


def parse(command: str) -> None:
    """Parse as click would before invoking: unknown options, bad choices and missing arguments raise."""
    words = shlex.split(re.sub(r"\$\([^)]*\)", "X", command))[1:]
    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="raydetect")
    name, rest = words[0], words[1:]
    cmd = group.get_command(ctx, name)  # type: ignore[attr-defined]
    if cmd is None:
        raise click.exceptions.UsageError(f"no such command {name!r}")
    if name == "submit" and "--" in rest:  # its own options end at `--`: the command after it is parsed too
        parse(shlex.join(rest[rest.index("--") + 1 :]))
        rest = rest[: rest.index("--")]
    cmd.make_context(name, rest, parent=ctx)


def test_the_readme_is_short_and_starts_with_the_audit() -> None:
    assert len(README.encode()) < 20_000
    first_screen = "\n".join(README.splitlines()[:40])
    assert "raydetect audit" in first_screen or "scripts/demo.sh" in first_screen
    assert "raydetect audit path/to/images --out" in README
    for column in ("id", "shown_path", "path", "label", "pred", "pred_name", "conf", "score", "adversarial", "status", "error"):
        assert f"`{column}`" in README, column


def test_every_readme_command_parses_with_the_real_cli() -> None:
    found = commands(README)
    assert len(found) >= 10, found
    for command in found:
        try:
            parse(command)
        except click.exceptions.UsageError as e:
            pytest.fail(f"README command does not parse: {command}\n  {e.format_message()}")


def test_the_check_finds_a_broken_command() -> None:
    with pytest.raises(click.exceptions.UsageError):
        parse("raydetect audit images --out o --no-such-option")
    with pytest.raises(click.exceptions.UsageError):
        parse("raydetect audit images")  # --out is required
    with pytest.raises(click.exceptions.UsageError):
        parse("raydetect submit -- raydetect evaluate x --bogus")
