"""Every ``robustlab`` command in the README's code blocks parses, and runs in order as written.

A README that drifts from the code (a renamed flag, a missing folder, two commands that no longer
fit together) fails here rather than for a reader. An HTML comment on the line before a fenced
block says how its commands are tested (blocks without one must be quick, and run in the smoke suite):

- ``<!-- readme-test: slow -->``: run under ``-m readme`` (deselected by default: about an hour), in README
  order, in one temporary folder (a block makes the inputs of the blocks after it);
- ``<!-- readme-test: external -->``: commands that need what a reader brings (their own data or
  checkpoint, a network): run under ``-m readme`` too, and each must succeed or fail with the one-line
  ``robustlab: error:`` that says what is missing.

Every command of every block, whatever its marker, is parsed by the CLI in the smoke suite, so a flag
that does not exist fails in seconds.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from robustlab.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*-->")
KINDS = ("quick", "slow", "external")


@dataclass(frozen=True)
class Command:
    """One ``robustlab`` command of the README, with how its block is tested."""

    args: tuple[str, ...]
    kind: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line}: robustlab {shlex.join(self.args)}"


def readme_commands(text: str) -> list[Command]:
    """The ``robustlab`` commands of ``text``'s fenced code blocks, in order (a YAML ``run: >`` block folded).

    A trailing ``# comment`` is dropped; a marker names the block's kind, else ``quick``.
    """
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marked = MARKER.fullmatch(previous.strip())
        kind = marked.group(1) if marked else "quick"
        if kind not in KINDS:
            raise ValueError(f"README.md:{i}: unknown readme-test marker {kind!r}; use one of {KINDS}")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        for number, command in _block_commands(lines[i + 1 : end]):
            commands.append(Command(tuple(shlex.split(command, comments=True))[1:], kind, i + 2 + number))
        i = end + 1
    return commands


def _block_commands(block: list[str]) -> list[tuple[int, str]]:
    """``(line offset, command)`` of each ``robustlab`` line; a YAML folded ``run: >`` joins its lines."""
    found = []
    n = 0
    while n < len(block):
        text = block[n].strip().removeprefix("- run:").strip()
        if text == ">":  # a folded scalar: the more-indented lines below are one line
            indent = len(block[n + 1]) - len(block[n + 1].lstrip()) if n + 1 < len(block) else 0
            end = n + 1
            while end < len(block) and block[end].strip() and len(block[end]) - len(block[end].lstrip()) >= indent:
                end += 1
            text, n, after = " ".join(line.strip() for line in block[n + 1 : end]), n + 1, end
        else:
            after = n + 1
        if text.startswith("robustlab "):
            found.append((n, text))
        n = after
    return found


def parse(command: Command) -> None:
    """Parse ``command`` with the CLI's own parser, running nothing (a flag that does not exist raises)."""
    group = cli.make_context("robustlab", list(command.args), resilient_parsing=True)
    name = command.args[0]
    sub = cli.get_command(group, name)
    if sub is None:
        raise click.UsageError(f"no command {name!r}")
    sub.make_context(name, list(command.args[1:]), parent=group)


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_has_commands_of_every_kind() -> None:
    kinds = {command.kind for command in COMMANDS}
    assert {"slow", "external"} <= kinds, kinds
    assert any(command.args[:1] == ("compare",) for command in COMMANDS)
    assert any("--baseline" in command.args for command in COMMANDS if command.kind == "slow")


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_readme_command_parses(command: Command) -> None:
    parse(command)


def test_a_flag_that_does_not_exist_fails_the_readme_test() -> None:
    text = "Intro.\n\n<!-- readme-test: slow -->\n```\nrobustlab eval --attack pgd --no-such-flag 3   # a typo\n```\n"
    (command,) = readme_commands(text)
    assert command.args == ("eval", "--attack", "pgd", "--no-such-flag", "3") and command.line == 5
    with pytest.raises(click.NoSuchOption):
        parse(command)


def test_a_folded_workflow_command_is_one_command() -> None:
    text = "```yaml\nsteps:\n  - run: >\n      robustlab eval --n 8\n      --out run.json\n  - run: robustlab list\n```"
    assert [c.args for c in readme_commands(text)] == [("eval", "--n", "8", "--out", "run.json"), ("list",)]


QUIET = ("eval", "generate", "train", "train-defense", "fool")
"""Commands whose progress bars are left out of the captured output (``--quiet`` changes no number)."""


def _run(command: Command, folder: Path) -> subprocess.CompletedProcess[str]:
    quiet = ["--quiet"] if command.args[0] in QUIET and "--quiet" not in command.args else []
    argv = [sys.executable, "-m", "robustlab", *command.args, *quiet]
    return subprocess.run(argv, cwd=folder, capture_output=True, text=True, check=False)


def test_quick_readme_commands_run(tmp_path: Path) -> None:
    for command in (c for c in COMMANDS if c.kind == "quick"):
        result = _run(command, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.readme
def test_every_readme_command_runs_in_order(tmp_path: Path) -> None:
    """The README as a new user copies it: one folder, every block in order (an hour on 2 CPU cores)."""
    for command in COMMANDS:
        result = _run(command, tmp_path)
        if command.kind == "external" and result.returncode == 2:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("robustlab: error: "), f"{command}\n{result.stderr}"
            continue
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"


def test_no_merge_conflict_is_left_in_the_readme() -> None:
    left = [n for n, line in enumerate(README.read_text().splitlines(), 1) if re.match(r"(<{7}|={7}|>{7})( |$)", line)]
    assert not left, f"merge-conflict markers at README.md lines {left}"
