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


def test_run_help_loads_neither_grpc_nor_the_spec_and_image_code() -> None:
    # `berth run` is the command whose start-up matters most; its help (and
    # its usage errors) must not pay for what only running a container needs.
    for args in (("run", "--help"), ("run", "--rm", "-d", "img", "id")):
        code = _PROBE.format(heavy=(*HEAVY, "berth.oci", "berth.core", "berth.client.cio"))
        res = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=env_with_src(),
            timeout=60,
        )
        _, _, tail = res.stdout.rpartition("\n@@")
        report = json.loads(tail)
        assert report["heavy"] == [], f"`berth {' '.join(args)}` imported {report['heavy']}"
        assert report["code"] == (0 if args[-1] == "--help" else 2)


# main() leaves through os._exit; these check it still behaves like sys.exit.
_MAIN = "from berth.cli.main import main; main()"


def _main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, *args],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=60,
    )


def test_main_flushes_block_buffered_output_before_leaving() -> None:
    # Into a pipe, stdout is block-buffered: nothing arrives unless main flushes.
    res = _main("--help")
    assert res.returncode == 0
    assert res.stdout.startswith("Usage: berth")
    # The whole help, to its last command row, not just a first buffer's worth.
    last_row = res.stdout.rstrip().splitlines()[-1].split()[0].rstrip(",")
    assert last_row == sorted(COMMANDS)[-1]


def test_main_exits_with_the_usage_error_code_and_message() -> None:
    res = _main("leases", "rm")
    assert res.returncode == 2
    assert "berth:" in res.stderr


def test_main_exits_with_a_failure_code_when_the_daemon_is_unreachable() -> None:
    res = _main("--address", "/nonexistent/berth.sock", "ns", "ls")
    assert res.returncode == 1
    assert "cannot connect to berthd at /nonexistent/berth.sock" in res.stderr


def test_leave_waits_the_ordinary_way_while_a_non_daemon_thread_runs() -> None:
    import threading

    from berth.cli import main as cli_main

    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    try:
        # With work still in flight, _leave must not os._exit (which would
        # kill this test process): it raises SystemExit for the interpreter.
        with pytest.raises(SystemExit) as exc:
            cli_main._leave(3)
        assert exc.value.code == 3
    finally:
        release.set()
        worker.join()


@pytest.mark.parametrize(("value", "code"), [(None, 0), (0, 0), (7, 7), ("boom", 1)])
def test_exit_code_follows_the_interpreter_rules(value: object, code: int) -> None:
    from berth.cli.main import _exit_code

    assert _exit_code(value) == code
