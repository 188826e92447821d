"""`berth tasks` against a real berthd: a detached container driven through
exec, ps, metrics, pause/resume, update, kill, wait and rm, checked with
Debian's ctr where it can see the effect; plus the errors ctr gives."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import Berthd, env_with_src
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-tasks-cli:1"
RUN = secrets.token_hex(3)  # runc state is host-wide: keep ids unique per run
RUNTIMES = [
    pytest.param("io.containerd.berth.v2", id="berth-shim"),
    pytest.param("io.containerd.runc.v2", id="runc-shim"),
]


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


def berth(d: Berthd, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "--address", d.address, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_src(),
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def status(d: Berthd, cid: str) -> str:
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == cid:
            return fields[2]
    return ""


def test_a_detached_task_through_its_whole_life(d: Berthd) -> None:
    cid = f"life-{RUN}"
    script = 'trap "exit 7" TERM; while true; do sleep 0.1; done'
    assert ok(berth(d, "run", "-d", IMAGE, cid, "sh", "-c", script)) == f"{cid}\n"
    try:
        rows = ok(berth(d, "tasks", "ls")).splitlines()
        assert rows[0].split() == ["TASK", "PID", "STATUS"]
        assert any(r.split()[0] == cid and r.split()[2] == "RUNNING" for r in rows[1:])

        listing = ok(berth(d, "tasks", "exec", "--exec-id", "e1", cid, "ls", "/"))
        assert "bin" in listing.split() and "etc" in listing.split()
        res = berth(d, "t", "exec", "--exec-id", "e2", cid, "sh", "-c", "exit 5")
        assert res.returncode == 5
        piped = ok(berth(d, "t", "exec", "-i", "--exec-id", "e3", cid, "cat", input="via-exec\n"))
        assert piped == "via-exec\n"

        ps = ok(berth(d, "tasks", "ps", cid)).splitlines()
        assert ps[0].split() == ["PID", "INFO"] and len(ps) >= 2
        assert ok(berth(d, "tasks", "ps", cid)).split()[2] in d.ctr("tasks", "ps", cid).stdout

        metrics = ok(berth(d, "tasks", "metrics", cid))
        assert "METRIC" in metrics and "pids.current" in metrics
        import json

        as_json = json.loads(ok(berth(d, "tasks", "metrics", "--format", "json", cid)))
        assert as_json["id"] == cid and as_json["stats"]

        ok(berth(d, "tasks", "pause", cid))
        assert status(d, cid) == "PAUSED"
        ok(berth(d, "tasks", "resume", cid))
        assert status(d, cid) == "RUNNING"

        ok(berth(d, "tasks", "update", "--memory-limit", "64m", cid))

        res = berth(d, "tasks", "rm", cid)
        assert res.returncode == 1 and "must be stopped before deletion" in res.stderr

        ok(berth(d, "tasks", "kill", cid))
        assert ok(berth(d, "tasks", "wait", cid)) == "7\n"
        assert status(d, cid) == "STOPPED"
        out = berth(d, "tasks", "rm", cid)
        assert out.returncode == 0 and out.stdout == f"{cid}\n"
        assert "exited with code 7" in out.stderr
        assert status(d, cid) == ""
        ok(berth(d, "containers", "rm", cid))
    finally:
        if status(d, cid):
            d.ctr("tasks", "rm", "-f", cid, check=False)
        d.ctr("containers", "rm", cid, check=False)


def task_pid(d: Berthd, cid: str) -> int:
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == cid:
            return int(fields[1])
    raise AssertionError(f"no task {cid}")


def cgroup_v1_dir(pid: int, controller: str) -> Path:
    """The directory of ``pid``'s cgroup in a cgroup v1 ``controller`` hierarchy."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller) / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
    or not Path("/sys/fs/cgroup/pids").is_dir(),
    reason="needs the cgroup v1 memory and pids hierarchies",
)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_update_changes_the_limits_in_the_tasks_cgroup(d: Berthd, runtime: str) -> None:
    cid = f"update-{runtime.split('.')[-2]}-{RUN}"
    limit = ["--memory-limit", "128m"]
    ok(berth(d, "run", "-d", "--runtime", runtime, *limit, IMAGE, cid, "sleep", "60"))
    try:
        pid = task_pid(d, cid)
        memory = cgroup_v1_dir(pid, "memory") / "memory.limit_in_bytes"
        pids = cgroup_v1_dir(pid, "pids") / "pids.max"
        assert memory.read_text().strip() == str(128 << 20)
        assert pids.read_text().strip() == "max"

        ok(berth(d, "tasks", "update", "--memory-limit", "64m", "--pids-limit", "17", cid))
        assert memory.read_text().strip() == str(64 << 20)
        assert pids.read_text().strip() == "17"

        # -1 lifts the limit; a limit not named stays as it was.
        ok(berth(d, "tasks", "update", "--pids-limit", "-1", cid))
        assert (memory.read_text().strip(), pids.read_text().strip()) == (str(64 << 20), "max")
        assert status(d, cid) == "RUNNING"
    finally:
        d.ctr("tasks", "rm", "-f", cid, check=False)
        d.ctr("containers", "rm", cid, check=False)


def test_start_attach_and_rm_force(d: Berthd) -> None:
    cid = f"startme-{RUN}"
    d.ctr("containers", "create", "--", IMAGE, cid, "sh", "-c", "echo started; exit 4")
    try:
        res = berth(d, "tasks", "start", cid)
        assert (res.returncode, res.stdout) == (4, "started\n"), res.stderr
        assert status(d, cid) == ""  # a foreground start removes its task

        long = f"long-{RUN}"
        d.ctr("containers", "create", IMAGE, long, "sleep", "60")
        try:
            ok(berth(d, "tasks", "start", "-d", long))
            assert status(d, long) == "RUNNING"
            assert ok(berth(d, "tasks", "rm", "-f", long)) == f"{long}\n"
            assert status(d, long) == ""
        finally:
            d.ctr("containers", "rm", long, check=False)
    finally:
        d.ctr("containers", "rm", cid, check=False)


def test_attach_sees_output_written_after_it_connects(d: Berthd) -> None:
    cid = f"attach-{RUN}"
    script = "sleep 1; echo late-output; exit 2"
    d.ctr("containers", "create", "--", IMAGE, cid, "sh", "-c", script)
    try:
        ok(berth(d, "tasks", "start", "-d", cid))
        res = berth(d, "tasks", "attach", cid)
        assert (res.returncode, res.stdout) == (2, "late-output\n"), res.stderr
        ok(berth(d, "tasks", "rm", cid))
    finally:
        d.ctr("tasks", "rm", "-f", cid, check=False)
        d.ctr("containers", "rm", cid, check=False)


# --- errors ---------------------------------------------------------------------------------


def _error(res: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert fragment in res.stderr, res.stderr


def test_a_missing_container_is_not_found(d: Berthd) -> None:
    for args in (["kill"], ["ps"], ["pause"], ["metrics"], ["rm"], ["attach"]):
        res = berth(d, "tasks", *args, f"absent-{RUN}")
        _error(res, 1, f"absent-{RUN}")
        assert "not found" in res.stderr


def test_a_container_without_a_task_is_not_found(d: Berthd) -> None:
    cid = f"notask-{RUN}"
    d.ctr("containers", "create", IMAGE, cid)
    try:
        res = berth(d, "tasks", "ps", cid)
        _error(res, 1, "not found")
    finally:
        d.ctr("containers", "rm", cid)


def test_bad_kill_arguments(d: Berthd) -> None:
    res = berth(d, "tasks", "kill", "-s", "SIGNOPE", "x")
    _error(res, 2, "unknown signal")
    res = berth(d, "tasks", "kill", "-a", "--exec-id", "e1", "x")
    _error(res, 2, "specify an exec-id or all; not both")


def test_exec_needs_an_exec_id_and_a_command(d: Berthd) -> None:
    _error(berth(d, "tasks", "exec", "c", "ls"), 2, "--exec-id")
    _error(berth(d, "tasks", "exec", "--exec-id", "e", "c"), 2, "ARGS")


def test_a_duplicate_exec_id_is_already_exists(d: Berthd) -> None:
    cid = f"dupexec-{RUN}"
    ok(berth(d, "run", "-d", IMAGE, cid, "sleep", "60"))
    try:
        ok(berth(d, "tasks", "exec", "-d", "--null-io", "--exec-id", "same", cid, "sleep", "30"))
        res = berth(d, "tasks", "exec", "--exec-id", "same", cid, "true")
        _error(res, 1, "already exists")
    finally:
        d.ctr("tasks", "rm", "-f", cid, check=False)
        deadline = time.monotonic() + 10
        while status(d, cid) and time.monotonic() < deadline:
            time.sleep(0.05)
        d.ctr("containers", "rm", cid, check=False)
