"""The `berth` command against a real berthd, checked against what Debian's ctr reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.daemon import Berthd, env_with_src, short_tmpdir

pytestmark = pytest.mark.integration


def berth(
    d: Berthd | None,
    *args: str,
    namespace: str = "default",
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `berth` program (a fresh interpreter) against ``d``."""
    cmd = [sys.executable, "-m", "berth.cli.main"]
    if d is not None:
        cmd += ["--address", d.address, "--namespace", namespace]
    cmd += list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env or env_with_src())
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def as_json(res: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(res.stdout)


def ctr_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def assert_one_line_error(res: subprocess.CompletedProcess[str], fragment: str) -> list[str]:
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("berth: ") and fragment in lines[0], res.stderr
    return lines


# --- version and plugins ---


def test_version_reports_the_daemon_ctr_sees(shared_berthd: Berthd) -> None:
    import berth as pkg

    info = as_json(berth(shared_berthd, "version", "--format", "json"))
    assert info["client"]["version"] == pkg.__version__
    ctr_out = shared_berthd.ctr("version").stdout
    assert f"Version:  {info['server']['version']}" in ctr_out
    assert info["server"]["uuid"] in ctr_out
    table = berth(shared_berthd, "version").stdout
    assert "Client:" in table and f"UUID:     {info['server']['uuid']}" in table


def test_plugins_ls_matches_ctr(shared_berthd: Berthd) -> None:
    ours = ctr_rows(berth(shared_berthd, "plugins", "ls").stdout)
    theirs = ctr_rows(shared_berthd.ctr("plugins", "ls").stdout)
    assert ours == theirs
    header = berth(shared_berthd, "plugins", "ls").stdout.splitlines()[0].split()
    assert header == ["TYPE", "ID", "PLATFORMS", "STATUS"]

    items = as_json(berth(shared_berthd, "plugins", "ls", "--format", "json"))
    assert [[p["type"], p["id"], ",".join(p["platforms"]) or "-", p["status"]] for p in items] == (
        theirs
    )


def test_plugins_ls_filters_quiet_and_detailed(shared_berthd: Berthd) -> None:
    d = shared_berthd
    only = berth(d, "plugins", "ls", "-q", "type==io.containerd.metadata.v1").stdout.split()
    assert only == d.ctr("plugins", "ls", "-q", "type==io.containerd.metadata.v1").stdout.split()
    assert only == ["sqlite"]
    either = berth(d, "plugins", "ls", "-q", "id==namespaces", "id==leases").stdout.split()
    assert sorted(either) == ["leases", "namespaces"]
    detail = berth(d, "plugins", "ls", "-d", "id==leases").stdout
    assert "Type:          io.containerd.grpc.v1" in detail and "Requires:" in detail


def test_malformed_filter_is_invalid_argument(shared_berthd: Berthd) -> None:
    res = berth(shared_berthd, "plugins", "ls", "type==", check=False)
    assert_one_line_error(res, "parse error")


# --- namespaces ---


def test_namespaces_json_matches_ctr(shared_berthd: Berthd) -> None:
    d = shared_berthd
    berth(d, "namespaces", "create", "cli-json", "team=a", "tier=gold", "flag")
    d.ctr("namespaces", "create", "cli-json-ctr", "made=byctr")
    ours = {n["name"]: n["labels"] for n in as_json(berth(d, "ns", "ls", "--format", "json"))}
    theirs = {}
    for line in d.ctr("namespaces", "ls").stdout.splitlines()[1:]:
        name, _, labels = line.strip().partition(" ")
        theirs[name] = dict(kv.split("=", 1) for kv in labels.strip().split(",") if kv)
    assert ours == theirs
    assert ours["cli-json"] == {"team": "a", "tier": "gold", "flag": "true"}
    assert berth(d, "ns", "ls", "-q").stdout.split() == d.ctr("ns", "ls", "-q").stdout.split()
    # The table is ctr's table.
    assert ctr_rows(berth(d, "ns", "ls").stdout) == ctr_rows(d.ctr("namespaces", "ls").stdout)


def test_namespace_label_sets_and_clears(shared_berthd: Berthd) -> None:
    d = shared_berthd
    berth(d, "ns", "create", "cli-label", "team=a", "tier=gold")
    berth(d, "ns", "label", "cli-label", "tier=silver", "team=", "new=1")
    row = next(r for r in ctr_rows(d.ctr("ns", "ls").stdout) if r[0] == "cli-label")
    assert row[1] == "new=1,tier=silver"


def test_namespace_create_duplicate_is_already_exists(shared_berthd: Berthd) -> None:
    berth(shared_berthd, "ns", "create", "cli-dup")
    res = berth(shared_berthd, "ns", "create", "cli-dup", check=False)
    assert_one_line_error(res, "already exists")


def test_namespace_create_invalid_name_is_rejected(shared_berthd: Berthd) -> None:
    res = berth(shared_berthd, "ns", "create", "bad_name!", check=False)
    assert_one_line_error(res, "must match")
    assert "bad_name!" not in berth(shared_berthd, "ns", "ls", "-q").stdout.split()


def test_removing_a_namespace_in_use_fails_with_a_hint(shared_berthd: Berthd) -> None:
    d = shared_berthd
    berth(d, "ns", "create", "cli-busy")
    berth(d, "leases", "create", "--id", "hold", namespace="cli-busy")
    res = berth(d, "ns", "rm", "cli-busy", check=False)
    lines = assert_one_line_error(res, "unable to delete cli-busy")
    assert "must be empty" in lines[0] and "leases" in lines[0]
    assert lines[1].startswith("hint: ") and "leases ls" in lines[1]
    assert "cli-busy" in d.ctr("ns", "ls", "-q").stdout.split()
    berth(d, "leases", "rm", "hold", namespace="cli-busy")
    assert berth(d, "ns", "rm", "cli-busy").stdout.split() == ["cli-busy"]
    assert "cli-busy" not in d.ctr("ns", "ls", "-q").stdout.split()


def test_ns_rm_goes_on_after_a_failure_and_treats_missing_as_removed(
    shared_berthd: Berthd,
) -> None:
    d = shared_berthd
    berth(d, "ns", "create", "cli-rm-a")
    berth(d, "ns", "create", "cli-rm-busy")
    berth(d, "leases", "create", "--id", "x", namespace="cli-rm-busy")
    res = berth(d, "ns", "rm", "cli-rm-busy", "never-made", "cli-rm-a", check=False)
    assert res.returncode == 1
    assert res.stdout.split() == ["never-made", "cli-rm-a"]
    assert "cli-rm-a" not in d.ctr("ns", "ls", "-q").stdout.split()
    berth(d, "leases", "rm", "x", namespace="cli-rm-busy")
    berth(d, "ns", "rm", "cli-rm-busy")


def test_invalid_namespace_option_is_rejected(shared_berthd: Berthd) -> None:
    res = berth(shared_berthd, "leases", "ls", namespace="bad!", check=False)
    assert_one_line_error(res, "namespace")


# --- leases ---


def test_lease_created_by_berth_is_what_ctr_sees(shared_berthd: Berthd) -> None:
    d = shared_berthd
    out = berth(
        d, "leases", "create", "--id", "cli-l1", "-x", "1h", "team=x", "bare", namespace="cli-ls"
    )
    assert out.stdout.strip() == "cli-l1"
    ctr_out = d.ctr("leases", "ls", namespace="cli-ls").stdout
    row = next(r for r in ctr_rows(ctr_out) if r[0] == "cli-l1")
    assert "containerd.io/gc.expire=" in row[2] and "team=x" in row[2] and "bare=" in row[2]
    # The same table as ctr's (both print local time).
    assert ctr_rows(berth(d, "leases", "ls", namespace="cli-ls").stdout) == ctr_rows(ctr_out)

    items = as_json(berth(d, "leases", "ls", "--format", "json", "id==cli-l1", namespace="cli-ls"))
    assert [i["id"] for i in items] == ["cli-l1"]
    assert items[0]["labels"]["team"] == "x"
    assert items[0]["created_at"].endswith("Z")

    generated = berth(d, "leases", "create", "-x", "0", namespace="cli-ls").stdout.strip()
    listed = as_json(berth(d, "leases", "ls", "--format", "json", namespace="cli-ls"))
    by_id = {i["id"]: i for i in listed}
    assert "containerd.io/gc.expire" not in by_id[generated]["labels"]
    assert generated in d.ctr("leases", "ls", "-q", namespace="cli-ls").stdout.split()

    removed = berth(d, "leases", "rm", "--sync", "cli-l1", generated, namespace="cli-ls")
    assert removed.stdout.split() == ["cli-l1", generated]
    assert d.ctr("leases", "ls", "-q", namespace="cli-ls").stdout.split() == []


def test_lease_created_by_ctr_is_listed_by_berth(shared_berthd: Berthd) -> None:
    d = shared_berthd
    d.ctr("leases", "create", "--id", "from-ctr", "owner=ctr", namespace="cli-ctrl")
    assert berth(d, "leases", "ls", "-q", namespace="cli-ctrl").stdout.split() == ["from-ctr"]
    d.ctr("leases", "rm", "from-ctr", namespace="cli-ctrl")


def test_removing_an_unknown_lease_is_not_found(shared_berthd: Berthd) -> None:
    res = berth(shared_berthd, "leases", "rm", "nope", namespace="cli-nf", check=False)
    assert_one_line_error(res, "not found")


def test_duplicate_lease_is_already_exists(shared_berthd: Berthd) -> None:
    berth(shared_berthd, "leases", "create", "--id", "twice", namespace="cli-dupl")
    res = berth(
        shared_berthd, "leases", "create", "--id", "twice", namespace="cli-dupl", check=False
    )
    assert_one_line_error(res, "already exists")
    berth(shared_berthd, "leases", "rm", "twice", namespace="cli-dupl")


# --- global options and the environment ---


def test_address_and_namespace_come_from_the_environment(shared_berthd: Berthd) -> None:
    env = env_with_src()
    env.pop("BERTH_ADDRESS", None)
    env["CONTAINERD_ADDRESS"] = shared_berthd.address
    env["CONTAINERD_NAMESPACE"] = "cli-env"
    berth(None, "leases", "create", "--id", "via-env", env=env)
    assert "via-env" in shared_berthd.ctr("leases", "ls", "-q", namespace="cli-env").stdout
    env["BERTH_ADDRESS"] = shared_berthd.address
    env["CONTAINERD_ADDRESS"] = "/nonexistent/containerd.sock"
    assert berth(None, "leases", "rm", "via-env", env=env).stdout.strip() == "via-env"


def test_timeout_option_allows_normal_calls(shared_berthd: Berthd) -> None:
    berth(shared_berthd, "--timeout", "10s", "ns", "create", "cli-timeout")
    res = berth(shared_berthd, "--timeout", "1m30s", "ns", "ls", "-q")
    assert "cli-timeout" in res.stdout.split()


def test_daemon_not_running_gives_a_clear_message_and_exit_1() -> None:
    base = short_tmpdir()
    try:
        sock = str(base / "none.sock")
        res = subprocess.run(
            [sys.executable, "-m", "berth.cli.main", "--address", sock, "ns", "ls"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env_with_src(),
        )
        lines = assert_one_line_error(res, f"cannot connect to berthd at {sock}")
        assert "No such file or directory" in lines[0]
        assert lines[1] == "hint: is berthd running? start it with `berthd` or pass --address"
        assert res.stdout == ""
    finally:
        os.rmdir(base)


def test_debug_shows_the_traceback_and_the_requests(shared_berthd: Berthd) -> None:
    res = berth(shared_berthd, "--debug", "leases", "rm", "missing", check=False)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "errdefs.NotFound" in res.stderr
    assert "Leases.Delete" in res.stderr
    assert res.stderr.splitlines()[-1] == 'berth: lease "missing": not found'
