"""``shim_group = "namespace"``: the containers of a namespace share one shim server.

A real berthd configured for grouping, driven by Debian's real ``ctr``. Each
test works in its own namespace, so each gets its own group shim. What is
checked is the multi-container contract of one shim: every task keeps its own
exits, waits, execs and deletion; ``Shutdown`` is ignored while the shim
still serves containers and the shim exits after the last deletion; a
restarted daemon reconnects every task of the group; a shim killed with
SIGKILL takes every task of its group to STOPPED/137 with everything
reclaimed; creates racing into an empty group, and deletions racing them,
leave no shim and, once it has lingered, no zygote behind. The default
configuration still gives one shim per container.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth import namespaces
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.core.runtime.manager import NAMESPACE_GROUP
from berth.shim import main as shim_main
from berth.shim import zygote
from berth.ttrpc import Client, ServiceStub
from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.procs import alive, ppid

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-grouping:1"
BERTH = "io.containerd.berth.v2"
TASK_DIR = "io.containerd.runtime.v2.task"
# Enough concurrent run --rm streams that, without the manager's per-group
# gate, a deletion's Shutdown lands inside another task's start/Create.
CHURN_STREAMS = 4
CHURN_RUNS = 20
# Rounds of creates that all find the group empty: each round, every one of
# them races to start the group's shim, and exactly one may win.
BURST_ROUNDS = 6
BURST_SIZE = 4
# The churn daemon's zygote goes this long after its last shim.
CHURN_LINGER = "1"
GROUPED = 'version = 2\n[plugins."io.containerd.runtime.v2.task"]\n  shim_group = "namespace"\n'


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def tasks(d: Berthd, ns: str) -> dict[str, tuple[int, str]]:
    """``ctr tasks ls``: id -> (pid, status)."""
    out = {}
    for line in d.ctr("tasks", "ls", namespace=ns).stdout.splitlines()[1:]:
        id, pid, status = line.split()[:3]
        out[id] = (int(pid), status)
    return out


def group_socket(d: Berthd, ns: str) -> Path:
    """Where Berth's shim puts a namespace group's socket (beside the daemon's)."""
    digest = hashlib.sha256(os.path.join(d.address, ns, NAMESPACE_GROUP).encode()).hexdigest()
    return d.base / "s" / digest


def bundles(d: Berthd, ns: str) -> list[str]:
    path = d.state / TASK_DIR / ns
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def mounts_under(d: Berthd) -> list[str]:
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(d.state / TASK_DIR) in line
    ]


def _socket_inodes_under(directory: Path) -> set[int]:
    """Inodes of the unix sockets bound to a name under ``directory``; the
    kernel keeps a socket's name after the file is unlinked."""
    inodes = set()
    prefix = f"{directory}/"
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith(prefix):
            inodes.add(int(fields[6]))
    return inodes


def daemon_shim_processes(d: Berthd) -> dict[int, bytes]:
    """pid -> command line of every process that serves one of this daemon's
    shim sockets (shims, and the zygote that forks them; both bind under
    ``<base>/s``) or works in one of its bundles. Found through the daemon's
    own paths only, so other daemons' shims never count."""
    inodes = _socket_inodes_under(d.base / "s")
    bundles_dir = f"{d.state / TASK_DIR}/"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            ours = cwd.startswith(bundles_dir)
            if not ours:
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{entry}/fd/{fd}")
                        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                            ours = True
                            break
            if ours and alive(int(entry)):
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
    return found


def is_zygote(cmdline: bytes) -> bool:
    return cmdline.rstrip(b"\0").split(b"\0")[-1] == b"zygote"


def shim_pids(d: Berthd) -> set[int]:
    return {pid for pid, cmdline in daemon_shim_processes(d).items() if not is_zygote(cmdline)}


def assert_no_shim_left(d: Berthd, linger: float) -> None:
    """No shim of ``d`` stays once its tasks are gone, and the zygote follows
    within its linger (it exits that long after its last shim)."""
    deadline = time.monotonic() + 10.0
    while shims := shim_pids(d):
        assert time.monotonic() < deadline, f"shims left behind: {shims}\n{d.logs()[-3000:]}"
        time.sleep(0.05)
    deadline = time.monotonic() + linger + 10.0
    while left := daemon_shim_processes(d):
        assert time.monotonic() < deadline, f"still running after its linger: {left}"
        time.sleep(0.05)


def run(d: Berthd, ns: str, id: str, *args: str) -> None:
    d.ctr("run", "-d", "--runtime", BERTH, IMAGE, id, *(args or ("sleep", "1000")), namespace=ns)


def remove(d: Berthd, ns: str, id: str) -> None:
    d.ctr("tasks", "kill", "--signal", "SIGKILL", id, namespace=ns, check=False)
    d.ctr("tasks", "rm", "--force", id, namespace=ns)
    d.ctr("containers", "rm", id, namespace=ns)


def shutdown_request(address: str, ns: str, id: str) -> None:
    """Send ``Shutdown`` to a shim directly, as a daemon deleting ``id`` would."""

    async def call() -> None:
        client = await Client.connect(address, timeout=5)
        try:
            stub = ServiceStub(client, api.DESCRIPTOR.services_by_name["Task"])
            await stub.call(
                "Shutdown",
                api.ShutdownRequest(id=id),
                timeout=5,
                metadata={namespaces.TTRPC_HEADER: ns},
            )
        finally:
            await client.close()

    asyncio.run(call())


@contextlib.contextmanager
def daemon(config: str | None) -> Iterator[Berthd]:
    base = short_tmpdir()
    d = Berthd(base, config=config)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def layout(busybox_image: Image) -> Iterator[Path]:
    base = short_tmpdir("b.grp.")
    try:
        yield write_oci_layout(base / "busybox.tar", busybox_image, image_name=IMAGE)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def grouped(layout: Path) -> Iterator[Berthd]:
    with daemon(GROUPED) as d:
        yield d


def with_image(d: Berthd, layout: Path, ns: str) -> Berthd:
    d.ctr("images", "import", str(layout), namespace=ns)
    return d


def test_namespace_containers_share_one_shim_through_their_whole_lifecycle(
    grouped: Berthd, layout: Path
) -> None:
    ns = "grp-life"
    d = with_image(grouped, layout, ns)
    ids = [f"c{i}" for i in range(5)]
    for id in ids:
        run(d, ns, id)
    listed = tasks(d, ns)
    assert {listed[id][1] for id in ids} == {"RUNNING"}
    shims = {ppid(listed[id][0]) for id in ids}
    assert len(shims) == 1, f"expected one shim, got {shims}"
    (shim,) = shims
    assert b"containerd-shim" in Path(f"/proc/{shim}/cmdline").read_bytes()
    address = {(d.state / TASK_DIR / ns / id / "address").read_text() for id in ids}
    assert address == {f"unix://{group_socket(d, ns)}"}

    # exec and a Wait that ends with the process's own status, next to the others.
    assert d.ctr("tasks", "exec", "--exec-id", "e1", "c2", "echo", "hi", namespace=ns).stdout == (
        "hi\n"
    )
    short = d.ctr(
        "run", "--rm", "--runtime", BERTH, IMAGE, "short", "sh", "-c", "exit 7",
        namespace=ns, check=False,
    )  # fmt: skip
    assert short.returncode == 7, short.stderr
    assert "short" not in tasks(d, ns)

    # Shutdown is ignored while the shim still serves containers.
    shutdown_request(address.pop(), ns, "c0")
    time.sleep(0.3)
    assert alive(shim)

    # c0 is the shim's first container: its bundle was the shim's working
    # directory. Deleting it leaves the shim serving the others.
    d.ctr("tasks", "kill", "--signal", "SIGKILL", "c0", namespace=ns)
    eventually(lambda: tasks(d, ns)["c0"][1] == "STOPPED")
    assert {tasks(d, ns)[id][1] for id in ids[1:]} == {"RUNNING"}
    rm = d.ctr("tasks", "rm", "c0", namespace=ns)
    assert "137" in rm.stderr
    d.ctr("containers", "rm", "c0", namespace=ns)
    assert alive(shim)
    assert "c0" not in bundles(d, ns)
    assert d.ctr("tasks", "exec", "--exec-id", "e2", "c1", "true", namespace=ns).returncode == 0
    run(d, ns, "c5")
    assert ppid(tasks(d, ns)["c5"][0]) == shim

    # The last deletion lets the shim go, and nothing stays behind.
    for id in [*ids[1:], "c5"]:
        assert alive(shim)
        remove(d, ns, id)
    eventually(lambda: not alive(shim))
    assert tasks(d, ns) == {}
    assert bundles(d, ns) == []
    assert not group_socket(d, ns).exists()
    assert mounts_under(d) == []


def test_killed_grouped_shim_stops_every_task_with_137(grouped: Berthd, layout: Path) -> None:
    ns = "grp-kill"
    d = with_image(grouped, layout, ns)
    ids = ["k0", "k1", "k2"]
    for id in ids:
        run(d, ns, id)
    inits = {id: pid for id, (pid, _) in tasks(d, ns).items()}
    (shim,) = {ppid(pid) for pid in inits.values()}

    os.kill(shim, signal.SIGKILL)

    # A task whose cleanup is under way is left out of the listing (as
    # containerd leaves out tasks it cannot query); then it stays, stopped.
    eventually(lambda: tasks(d, ns) == {id: (inits[id], "STOPPED") for id in ids})
    for id in ids:
        # The cleanup's runc delete --force took each orphaned container down.
        eventually(lambda id=id: not alive(inits[id]))  # type: ignore[misc]
    eventually(lambda: bundles(d, ns) == [])
    assert not group_socket(d, ns).exists()
    assert mounts_under(d) == []
    for id in ids:
        assert "137" in d.ctr("tasks", "rm", id, namespace=ns).stderr
        d.ctr("containers", "rm", id, namespace=ns)

    # The group starts afresh with a new shim.
    run(d, ns, "k3")
    assert ppid(tasks(d, ns)["k3"][0]) != shim
    remove(d, ns, "k3")
    assert bundles(d, ns) == []


@pytest.fixture
def churn_daemon(layout: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Berthd]:
    """A grouped daemon of the test's own, so every shim and zygote of its
    is the test's; its shims inherit a short zygote linger."""
    monkeypatch.setenv(zygote.LINGER_ENV, CHURN_LINGER)
    monkeypatch.delenv(zygote.DISABLE_ENV, raising=False)
    with daemon(GROUPED) as d:
        yield d


def test_concurrent_runs_in_one_group_survive_its_shim_coming_and_going(
    churn_daemon: Berthd, layout: Path
) -> None:
    # Streams of run --rm in one group: each deletion may be the group's
    # last (its Shutdown ends the shim) while the other stream is starting a
    # task in the same group. Every run must still succeed.
    ns = "grp-churn"
    d = with_image(churn_daemon, layout, ns)

    def stream(tag: str) -> list[int]:
        codes = []
        for i in range(CHURN_RUNS):
            res = d.ctr(
                "run", "--rm", "--runtime", BERTH, IMAGE, f"{tag}{i}", "sh", "-c", "exit 3",
                namespace=ns, check=False,
            )  # fmt: skip
            assert res.returncode == 3, res.stderr + d.logs()[-3000:]
            codes.append(res.returncode)
        return codes

    with concurrent.futures.ThreadPoolExecutor(CHURN_STREAMS) as pool:
        results = list(pool.map(stream, "abcdefgh"[:CHURN_STREAMS]))
    assert results == [[3] * CHURN_RUNS] * CHURN_STREAMS
    assert tasks(d, ns) == {}
    assert bundles(d, ns) == []
    eventually(lambda: not group_socket(d, ns).exists())
    assert mounts_under(d) == []
    assert_no_shim_left(d, float(CHURN_LINGER))

    # Creates that all find the group empty race to start its shim: one
    # wins, the others join it, and no loser's server is left serving nothing.
    for round in range(BURST_ROUNDS):
        ids = [f"burst{round}-{i}" for i in range(BURST_SIZE)]
        with concurrent.futures.ThreadPoolExecutor(BURST_SIZE) as pool:
            list(pool.map(lambda id: run(d, ns, id), ids))
        listed = tasks(d, ns)
        shims = {ppid(listed[id][0]) for id in ids}
        assert len(shims) == 1, f"round {round}: one group, several shims {shims}"
        with concurrent.futures.ThreadPoolExecutor(BURST_SIZE) as pool:
            list(pool.map(lambda id: remove(d, ns, id), ids))
        assert tasks(d, ns) == {}
        eventually(lambda: not shim_pids(d))
    assert bundles(d, ns) == []
    assert not group_socket(d, ns).exists()
    assert_no_shim_left(d, float(CHURN_LINGER))


def race_to_listen(path: str, racers: int) -> tuple[list[socket.socket], list[BaseException]]:
    """``racers`` threads claim ``path`` at once, as concurrent starts do:
    the sockets they claimed, and what they raised."""
    barrier = threading.Barrier(racers)
    claimed: list[socket.socket] = []
    errors: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            sock = shim_main._listen(path)
        except BaseException as exc:
            errors.append(exc)
        else:
            if sock is not None:
                claimed.append(sock)  # type: ignore[arg-type]

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return claimed, errors


def test_concurrent_starts_of_one_group_bind_one_server() -> None:
    # What each `start` does first, raced by several at once: claim the
    # group's socket or find it served. Exactly one claims it, every other
    # one joins, and a stale socket left by a killed shim is taken over
    # once, never out from under a fresh claim.
    base = Path(tempfile.mkdtemp(prefix="b.gs.", dir="/tmp"))
    path = str(base / "s" / "group")
    try:
        for round in range(150):
            if round % 3 == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
                    dead.bind(path)  # a socket file nobody listens on
            owners, errors = race_to_listen(path, 4)
            try:
                assert errors == []
                assert len(owners) == 1, f"round {round}: {len(owners)} servers claimed the group"
                assert shim_main._probe(path) == "live"
            finally:
                for sock in owners:
                    sock.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        assert os.listdir(base / "s") == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_restarted_daemon_reconnects_every_task_of_a_grouped_shim(layout: Path) -> None:
    ns = "grp-restart"
    with daemon(GROUPED) as d:
        with_image(d, layout, ns)
        ids = ["r0", "r1", "r2"]
        for id in ids:
            run(d, ns, id)
        before = {id: pid for id, (pid, _) in tasks(d, ns).items()}
        (shim,) = {ppid(pid) for pid in before.values()}

        assert d.stop() == 0
        assert alive(shim)
        d.start()

        after = tasks(d, ns)
        assert after == {id: (before[id], "RUNNING") for id in ids}, d.logs()[-3000:]
        for id in ids:
            d.ctr("tasks", "exec", "--exec-id", "after", id, "true", namespace=ns)
        remove(d, ns, "r0")
        assert alive(shim)
        assert {tasks(d, ns)[id][1] for id in ids[1:]} == {"RUNNING"}
        remove(d, ns, "r1")
        remove(d, ns, "r2")
        eventually(lambda: not alive(shim))
        assert bundles(d, ns) == []
        assert not group_socket(d, ns).exists()
        assert mounts_under(d) == []


def test_default_config_starts_one_shim_per_container(shared_berthd: Berthd, layout: Path) -> None:
    ns = "grp-default"
    d = with_image(shared_berthd, layout, ns)
    ids = ["d0", "d1", "d2"]
    for id in ids:
        run(d, ns, id)
    shims = {ppid(pid) for pid, _ in tasks(d, ns).values()}
    assert len(shims) == len(ids)
    for id in ids:
        remove(d, ns, id)
    for shim in shims:
        eventually(lambda shim=shim: not alive(shim))  # type: ignore[misc]
    assert bundles(d, ns) == []
