"""docs/cli.md is generated from the commands' help and must not go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from berth.cli._docs import render
from berth.cli.main import COMMANDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_matches_the_commands() -> None:
    # Rendered in a fresh interpreter: click caches each command's help option
    # on first use, so help text in this process depends on what ran before.
    fresh = subprocess.run(
        [sys.executable, "-m", "berth.cli._docs"], capture_output=True, text=True, check=True
    ).stdout
    assert DOC.read_text() == fresh, (
        "docs/cli.md is out of date: run `.venv/bin/python -m berth.cli._docs > docs/cli.md`"
    )


def test_cli_reference_documents_every_group_with_examples() -> None:
    text = render()
    for group in COMMANDS:
        assert f"`berth {group}`" in text
    assert text.count("Examples:") >= 8
