"""`berth` starts fast: help never loads gRPC, and lists every command group."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from berth.cli.main import ALIASES, COMMANDS
from tests.support.daemon import env_with_src

HEAVY = ("grpc", "google.protobuf", "berth.api", "berth.client._core", "berth.client._transport")

# Runs berth in a fresh interpreter, then reports which heavy modules got imported.
_PROBE = """
import json, sys
from berth.cli.main import run
code = run(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "grpc" or m.startswith({heavy!r}))
print("\\n@@" + json.dumps({{"code": code, "heavy": heavy}}))
"""


def _probe(*args: str) -> tuple[int, list[str], str]:
    code = _PROBE.format(heavy=HEAVY)
    res = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=60,
    )
    out, _, tail = res.stdout.rpartition("\n@@")
    assert tail, res.stderr
    report = json.loads(tail)
    return report["code"], report["heavy"], out


def test_root_help_does_not_import_grpc() -> None:
    code, heavy, out = _probe("--help")
    assert code == 0
    assert heavy == []
    assert "Usage: berth" in out


@pytest.mark.parametrize("group", sorted(COMMANDS))
def test_group_help_does_not_import_grpc(group: str) -> None:
    code, heavy, out = _probe(group, "--help")
    assert code == 0
    assert heavy == [], f"`berth {group} --help` imported {heavy}"
    assert f"Usage: berth {group}" in out


def test_subcommand_help_does_not_import_grpc() -> None:
    code, heavy, out = _probe("ns", "create", "--help")
    assert code == 0 and heavy == []
    assert "NAME" in out and "Examples:" in out


def test_usage_error_does_not_import_grpc() -> None:
    code, heavy, _ = _probe("leases", "rm")
    assert code == 2 and heavy == []


def test_root_help_lists_every_group_with_its_aliases() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "--help"],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=60,
    )
    assert res.returncode == 0
    commands = res.stdout.split("Commands:", 1)[1]
    listed = {line.split()[0].rstrip(",") for line in commands.splitlines() if line.strip()}
    assert listed == set(COMMANDS)
    for alias, target in ALIASES.items():
        row = next(line for line in commands.splitlines() if line.strip().startswith(target))
        assert alias in row.split("  ", 2)[1], row


def test_console_script_runs() -> None:
    bin_dir = sys.executable.rsplit("/", 1)[0]
    res = subprocess.run(
        [f"{bin_dir}/berth", "--version"], capture_output=True, text=True, timeout=60
    )
    import berth

    assert res.returncode == 0
    assert res.stdout.strip() == f"berth {berth.__version__}"
