"""`berth run` against a real berthd and runc: output, exit codes, stdin, a
terminal, signal forwarding, both runc shims, and bad input.

The busybox image is imported (and unpacked) with Debian's real ctr, so these
tests depend on run's own code paths, not on berth's importer; one test pulls
from the session registry to cover run's pull-when-missing.
"""

from __future__ import annotations

import fcntl
import os
import pty
import secrets
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import pytest

from tests.support.daemon import Berthd, env_with_src
from tests.support.fixtures import PushedImage
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-run:1"
# runc keeps container state per namespace host-wide, so ids are unique per run:
# another daemon on this host (a parallel test run) may use the same names.
RUN = secrets.token_hex(3)
BERTH_SHIM = "io.containerd.berth.v2"
RUNC_SHIM = "io.containerd.runc.v2"


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


def berth_cmd(d: Berthd, *args: str) -> list[str]:
    return [sys.executable, "-m", "berth.cli.main", "--address", d.address, *args]


def run(
    d: Berthd, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        berth_cmd(d, *args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_with_src(),
    )


def leftovers(d: Berthd, cid: str) -> list[str]:
    """What of ``cid`` is still recorded: task, container, snapshot."""
    found = []
    if cid in d.ctr("tasks", "ls", "-q").stdout.split():
        found.append("task")
    if cid in d.ctr("containers", "ls", "-q").stdout.split():
        found.append("container")
    if cid in d.ctr("snapshots", "ls").stdout.split():
        found.append("snapshot")
    return found


# --- output and exit codes ----------------------------------------------------------------


@pytest.mark.parametrize("runtime", [BERTH_SHIM, RUNC_SHIM], ids=["berth-shim", "runc-shim"])
def test_run_rm_prints_the_output_and_leaves_nothing(d: Berthd, runtime: str) -> None:
    cid = f"hi-{runtime.split('.')[-2]}-{RUN}"
    res = run(d, "run", "--rm", "--runtime", runtime, IMAGE, cid, "echo", "hi")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hi\n"
    assert leftovers(d, cid) == []


@pytest.mark.parametrize("code", [0, 3, 127])
def test_the_process_exit_code_is_berths(d: Berthd, code: int) -> None:
    res = run(d, "run", "--rm", IMAGE, f"exit{code}-{RUN}", "sh", "-c", f"exit {code}")
    assert res.returncode == code, res.stderr
    assert res.stderr == ""


def test_stdout_and_stderr_stay_apart(d: Berthd) -> None:
    res = run(d, "run", "--rm", IMAGE, f"split-{RUN}", "sh", "-c", "echo out; echo err >&2")
    assert (res.stdout, res.stderr) == ("out\n", "err\n")


def test_large_output_arrives_whole(d: Berthd) -> None:
    # Far more than a FIFO buffers: the copy must keep up until EOF.
    res = run(d, "run", "--rm", IMAGE, f"big-{RUN}", "sh", "-c", "seq 1 100000")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 100000 and lines[-1] == "100000"


def test_options_reach_the_spec(d: Berthd, tmp_path: os.PathLike[str]) -> None:
    host = os.path.join(str(tmp_path), "shared")
    os.mkdir(host)
    with open(os.path.join(host, "marker"), "w") as f:
        f.write("from-host\n")
    res = run(
        d,
        "run",
        "--rm",
        "--env",
        "GREETING=hello",
        "--cwd",
        "/tmp",
        "--user",
        "nobody",
        "--memory-limit",
        "64m",
        "--label",
        "team=run",
        "--mount",
        f"type=bind,src={host},dst=/mnt/host,options=rbind:ro",
        IMAGE,
        f"opts-{RUN}",
        "sh",
        "-c",
        'echo "$GREETING $(pwd) $(id -u)"; cat /mnt/host/marker; touch /mnt/host/x || echo ro'
        "; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || true",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "hello /tmp 65534"
    assert lines[1] == "from-host"
    assert lines[2] == "ro"
    if len(lines) > 3:  # cgroup v1 shows the limit inside the container
        assert lines[3] == str(64 << 20)


def test_net_host_shares_the_host_network(d: Berthd) -> None:
    res = run(d, "run", "--rm", "--net-host", IMAGE, f"nethost-{RUN}", "cat", "/proc/net/dev")
    assert res.returncode == 0, res.stderr
    with open("/proc/net/dev") as f:
        host_ifaces = {line.split(":")[0].strip() for line in f.read().splitlines()[2:]}
    ifaces = {line.split(":")[0].strip() for line in res.stdout.splitlines()[2:]}
    assert ifaces == host_ifaces


# --- stdin, terminal, signals -------------------------------------------------------------


def test_stdin_reaches_the_process_with_dash_i(d: Berthd) -> None:
    res = run(d, "run", "--rm", "-i", IMAGE, f"stdin-{RUN}", "cat", input="data\nmore\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "data\nmore\n"


def test_without_dash_i_the_process_reads_nothing(d: Berthd) -> None:
    res = run(d, "run", "--rm", IMAGE, f"nostdin-{RUN}", "cat", input="ignored\n")
    assert (res.returncode, res.stdout) == (0, "")


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until_exit(master: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break  # the slave side closed: berth exited
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_tty_gives_the_process_a_terminal_of_this_size(d: Berthd) -> None:
    master, slave = pty.openpty()
    _set_winsize(slave, 33, 99)
    proc = subprocess.Popen(
        berth_cmd(d, "run", "-t", "--rm", IMAGE, f"tty1-{RUN}", "sh", "-c", "stty size; tty"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_with_src(),
        start_new_session=True,
    )
    os.close(slave)
    try:
        out = _read_until_exit(master, proc, 30)
        assert proc.wait(30) == 0, out
    finally:
        os.close(master)
    text = out.decode(errors="replace")
    assert "33 99" in text, text
    assert "/dev/pts/" in text or "/dev/console" in text, text
    assert leftovers(d, f"tty1-{RUN}") == []


def test_tty_without_a_terminal_is_a_usage_error(d: Berthd) -> None:
    res = run(d, "run", "-t", "--rm", IMAGE, f"notty-{RUN}", "true")
    assert res.returncode == 2
    assert "needs a terminal" in res.stderr
    assert leftovers(d, f"notty-{RUN}") == []


@pytest.mark.parametrize(
    ("sig", "name"), [(signal.SIGTERM, "term"), (signal.SIGINT, "int")], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_to_berth_is_forwarded_and_rm_still_cleans_up(
    d: Berthd, sig: signal.Signals, name: str
) -> None:
    # PID 1 only dies of signals it handles: each trap exits as the signal would have.
    script = (
        'trap "echo got-term; exit 143" TERM; trap "echo got-int; exit 130" INT; '
        "echo ready; sleep 100 & wait"
    )
    cid = f"sigfwd-{name}-{RUN}"
    proc = subprocess.Popen(
        berth_cmd(d, "run", "--rm", IMAGE, cid, "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_with_src(),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if first != b"ready\n":
        proc.kill()
        raise AssertionError((first, proc.communicate(timeout=30)))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert out == f"got-{name}\n".encode()
    assert leftovers(d, cid) == []


def _read_until(master: int, marker: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
    return out


def _take_controlling_tty() -> None:
    # In the child after setsid(): stdin's pty becomes its controlling
    # terminal, so a ^C that berth left to the line discipline would signal
    # berth itself, as it would in a shell.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("runtime", [BERTH_SHIM, RUNC_SHIM], ids=["berth-shim", "runc-shim"])
def test_ctrl_c_on_a_tty_reaches_the_process(d: Berthd, runtime: str) -> None:
    # ctr run -t against containerd gives the same: the ^C goes through to
    # the container's terminal, whose shell runs its INT trap; exit 130.
    cid = f"ctrlc-{runtime.split('.')[-2]}-{RUN}"
    script = 'trap "echo got-int; exit 130" INT; echo ready; while :; do sleep 1; done'
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        berth_cmd(d, "run", "-t", "--rm", "--runtime", runtime, IMAGE, cid, "sh", "-c", script),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_with_src(),
        start_new_session=True,
        preexec_fn=_take_controlling_tty,
    )
    os.close(slave)
    try:
        out = _read_until(master, b"ready", 30)
        if b"ready" not in out:
            proc.kill()
            raise AssertionError(out)
        os.write(master, b"\x03")
        out += _read_until_exit(master, proc, 30)
        assert proc.wait(30) == 130, out
    finally:
        os.close(master)
    assert b"got-int" in out, out
    assert leftovers(d, cid) == []


# --- detached ------------------------------------------------------------------------------


def test_detach_prints_the_id_and_leaves_it_running(d: Berthd) -> None:
    res = run(d, "run", "-d", IMAGE, f"det1-{RUN}", "sleep", "30")
    assert (res.returncode, res.stdout) == (0, f"det1-{RUN}\n"), res.stderr
    try:
        assert "RUNNING" in d.ctr("tasks", "ls").stdout
    finally:
        # berth's own rm: it also removes the FIFOs the detached run left.
        rm = run(d, "tasks", "rm", "-f", f"det1-{RUN}")
        assert rm.returncode == 0, rm.stderr
        assert run(d, "containers", "rm", f"det1-{RUN}").returncode == 0
    # The snapshot is left to the garbage collector, which may or may not have run yet.
    assert set(leftovers(d, f"det1-{RUN}")) <= {"snapshot"}
    assert not any(
        name.startswith(f"det1-{RUN}")
        for root, _, files in os.walk("/run/berth/fifo")
        for name in files
    )


def test_rm_and_detach_together_are_refused(d: Berthd) -> None:
    res = run(d, "run", "--rm", "-d", IMAGE, f"both-{RUN}", "true")
    assert res.returncode == 2
    assert "--detach and --rm cannot be specified together" in res.stderr


# --- pulling ------------------------------------------------------------------------------


def test_a_missing_image_is_pulled_then_run(
    d: Berthd, busybox_image: Image, push_image: Callable[..., PushedImage], repo_name: str
) -> None:
    pushed = push_image(busybox_image, repo_name)
    res = run(d, "run", "--rm", pushed.ref, f"pulled-{RUN}", "echo", "pulled-ok")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "pulled-ok\n"  # progress went to stderr
    assert pushed.ref in d.ctr("images", "ls", "-q").stdout


# --- bad input ----------------------------------------------------------------------------


def _one_error(res: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("berth: ") and fragment in res.stderr, res.stderr


def test_missing_image_with_pull_never(d: Berthd) -> None:
    res = run(
        d, "run", "--rm", "--pull", "never", "docker.io/library/absent:1", f"m1-{RUN}", "true"
    )
    _one_error(res, 1, "docker.io/library/absent:1")
    assert "not here" in res.stderr


def test_missing_image_in_a_registry(d: Berthd, registry: Registry) -> None:
    ref = f"{registry.host}/absent/image:1"
    res = run(d, "run", "--rm", ref, f"m2-{RUN}", "true")
    _one_error(res, 1, "not found")
    assert leftovers(d, f"m2-{RUN}") == []


def test_a_missing_binary_exits_127_with_runcs_reason(d: Berthd) -> None:
    res = run(d, "run", "--rm", IMAGE, f"nobin-{RUN}", "/no/such/binary")
    _one_error(res, 127, "no such file or directory")
    assert leftovers(d, f"nobin-{RUN}") == []


def test_a_command_not_on_path_exits_127(d: Berthd) -> None:
    res = run(d, "run", "--rm", IMAGE, f"nopath-{RUN}", "nonexistent-command")
    _one_error(res, 127, "executable file not found")


def test_an_unknown_user_is_refused_before_anything_is_made(d: Berthd) -> None:
    res = run(d, "run", "--rm", "--user", "no-such-user", IMAGE, f"baduser-{RUN}", "id")
    _one_error(res, 1, "no-such-user")
    # The user is looked up in the prepared rootfs, so a snapshot exists for a
    # moment, held only by run's lease: once that is gone the collector takes
    # it, on its own schedule (ctr's leases are deleted the same way). Deleting
    # a lease with --sync waits for a collection.
    lease = f"gc-{RUN}-{secrets.token_hex(2)}"
    d.ctr("leases", "create", "--id", lease)
    d.ctr("leases", "rm", "--sync", lease)
    assert leftovers(d, f"baduser-{RUN}") == []


def test_a_duplicate_container_id_is_already_exists(d: Berthd) -> None:
    d.ctr("containers", "create", IMAGE, f"dup1-{RUN}")
    try:
        res = run(d, "run", "--rm", IMAGE, f"dup1-{RUN}", "true")
        _one_error(res, 1, f'container "dup1-{RUN}": already exists')
    finally:
        d.ctr("containers", "rm", f"dup1-{RUN}")


def test_a_bad_mount_is_a_usage_error(d: Berthd) -> None:
    res = run(d, "run", "--rm", "--mount", "type=bind,src=/tmp", IMAGE, f"badmount-{RUN}", "true")
    assert res.returncode == 2
    assert "has no dst" in res.stderr
    res = run(
        d, "run", "--rm", "--mount", "type=bind,src=rel,dst=/x", IMAGE, f"badmount-{RUN}", "true"
    )
    _one_error(res, 1, "must be an absolute host path")
