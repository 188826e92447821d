"""berthd and containerd side by side: the Go shim's runc state does not collide.

Debian's ``containerd-shim-runc-v2`` keeps runc's state under
``/run/containerd/runc/<namespace>`` unless the runtime options name a
``Root``, and containerd's own tasks live there too. berthd gives that shim
the directory Berth's own shim uses (``runc`` beside berthd's socket), so the
same container id can run under both daemons at once, and containerd
removing its container (runc kill, runc delete) leaves berthd's running. An
explicit ``Root`` (``ctr run --runc-root``) and the ``runc_root`` setting are
honoured.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.containerd_peer import Containerd, available
from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.oci_bundle import cleanup_base
from tests.support.procs import alive, processes_mentioning, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="containerd, ctr or runc not installed"),
]

IMAGE = "docker.io/library/berth-runc-root:1"
RUNC_SHIM = "io.containerd.runc.v2"
BERTH_SHIM = "io.containerd.berth.v2"
#: The peer's ctr always speaks in this namespace; berthd's side uses it too,
#: so both daemons' runc state directories would be the same one.
NS = "berth-test"
CONTAINERD_RUNC = Path("/run/containerd/runc")


def unique(prefix: str) -> str:
    # Other test runs on the host share /run/containerd/runc/berth-test.
    return f"{prefix}-{secrets.token_hex(4)}"


def task_pid(ctr_ls: str, id: str) -> int:
    """The pid of RUNNING task ``id`` in ``ctr tasks ls`` output, 0 if not running."""
    m = re.search(rf"^{re.escape(id)}\s+(\d+)\s+RUNNING\s*$", ctr_ls, re.M)
    return int(m.group(1)) if m else 0


def runc_state(root: Path, id: str) -> dict[str, object]:
    """runc's record of container ``id`` under the runc root ``root``/``NS``."""
    data: dict[str, object] = json.loads((root / NS / id / "state.json").read_text())
    return data


#: A daemon's ctr, speaking in ``NS``.
Ctr = Callable[..., subprocess.CompletedProcess[str]]


def remove_all(ctr: Ctr) -> None:
    """Force-remove every task and container a daemon holds in ``NS``."""
    for id in ctr("tasks", "ls", "-q", check=False).stdout.split():
        ctr("tasks", "rm", "-f", id, check=False)
    for id in ctr("containers", "ls", "-q", check=False).stdout.split():
        ctr("containers", "rm", id, check=False)


@pytest.fixture
def pair(busybox_image: Image) -> Iterator[tuple[Berthd, Containerd]]:
    base = short_tmpdir("b.rr.")
    (base / "b").mkdir()
    (base / "c").mkdir()
    berthd = Berthd(base / "b")
    peer = Containerd(base / "c")
    try:
        berthd.start()
        peer.start()
        layout = write_oci_layout(base / "busybox.tar", busybox_image, image_name=IMAGE)
        berthd.ctr("images", "import", str(layout), namespace=NS)
        peer.ctr("images", "import", str(layout))
        yield berthd, peer
    finally:
        remove_all(peer.ctr)
        remove_all(functools.partial(berthd.ctr, namespace=NS))
        peer.stop()
        berthd.stop()
        gone = wait_until(lambda: not processes_mentioning(str(base)))
        cleanup_base(base)
    assert gone, processes_mentioning(str(base))


def stopped(ctr_ls: str, id: str) -> bool:
    return re.search(rf"^{re.escape(id)}\s+\d+\s+STOPPED\s*$", ctr_ls, re.M) is not None


@pytest.mark.parametrize("removal", ["kill-then-rm", "rm-force"])
def test_same_id_runs_under_berthd_and_containerd_at_once(
    pair: tuple[Berthd, Containerd], removal: str
) -> None:
    berthd, peer = pair
    id = unique("twin")
    berth_root = berthd.base / "runc"
    # ctr puts both containers in the cgroup /<namespace>/<id>, which is the
    # client's choice and so the same under both daemons. A forced removal
    # signals every process in the container's cgroup (runc kill --all), so
    # it is tried with containerd's container in a cgroup of its own.
    cgroup = ["--cgroup", f"/{id}-peer"] if removal == "rm-force" else []

    berthd.ctr("run", "-d", "--runtime", RUNC_SHIM, IMAGE, id, "sleep", "1000", namespace=NS)
    # Before berthd kept its own runc root, this failed with "container with
    # given ID already exists", and containerd's cleanup of the failed create
    # (runc delete --force) killed berthd's container.
    peer.ctr("run", "-d", "--runtime", RUNC_SHIM, *cgroup, IMAGE, id, "sleep", "1000")

    ours = task_pid(berthd.ctr("tasks", "ls", namespace=NS).stdout, id)
    theirs = task_pid(peer.ctr("tasks", "ls").stdout, id)
    assert ours and theirs and ours != theirs
    # Each daemon's runc state is its own: berthd's beside its socket.
    assert runc_state(berth_root, id)["init_process_pid"] == ours
    assert runc_state(CONTAINERD_RUNC, id)["init_process_pid"] == theirs
    bundle = berthd.state / "io.containerd.runtime.v2.task" / NS / id
    # What the Go shim recorded for its delete command (cleanup, restore).
    assert json.loads((bundle / "options.json").read_text())["root"] == str(berth_root)

    # containerd's removal (its runc kill and runc delete) reaches only its own container.
    if removal == "rm-force":
        peer.ctr("tasks", "rm", "-f", id)
    else:
        peer.ctr("tasks", "kill", "-s", "SIGKILL", id)
        assert wait_until(lambda: stopped(peer.ctr("tasks", "ls").stdout, id))
        peer.ctr("tasks", "rm", id)
    peer.ctr("containers", "rm", id)
    assert wait_until(lambda: not alive(theirs))
    assert not (CONTAINERD_RUNC / NS / id).exists()
    assert alive(ours)
    assert task_pid(berthd.ctr("tasks", "ls", namespace=NS).stdout, id) == ours
    assert runc_state(berth_root, id)["init_process_pid"] == ours

    berthd.ctr("tasks", "rm", "-f", id, namespace=NS)
    berthd.ctr("containers", "rm", id, namespace=NS)
    assert wait_until(lambda: not alive(ours))
    assert not (berth_root / NS / id).exists()


def run_with_state_in(berthd: Berthd, root: Path, id: str, *run_flags: str) -> None:
    """``ctr run -d`` with ``run_flags``; runc's state is under ``root`` and
    nowhere else, and goes with the container."""
    berthd.ctr("run", "-d", *run_flags, IMAGE, id, "sleep", "1000", namespace=NS)
    pid = task_pid(berthd.ctr("tasks", "ls", namespace=NS).stdout, id)
    assert pid and runc_state(root, id)["init_process_pid"] == pid
    assert not (berthd.base / "runc" / NS / id).exists()
    assert not (CONTAINERD_RUNC / NS / id).exists()
    berthd.ctr("tasks", "rm", "-f", id, namespace=NS)
    berthd.ctr("containers", "rm", id, namespace=NS)
    assert wait_until(lambda: not alive(pid))
    assert not (root / NS / id).exists()


def test_explicit_runc_root_is_kept(pair: tuple[Berthd, Containerd]) -> None:
    berthd, _ = pair
    explicit = berthd.base / "explicit-runc"
    run_with_state_in(
        berthd, explicit, unique("rooted"), "--runtime", RUNC_SHIM, "--runc-root", str(explicit)
    )


@pytest.fixture
def configured(busybox_image: Image) -> Iterator[tuple[Berthd, Path]]:
    base = short_tmpdir("b.rrc.")
    root = base / "elsewhere"
    berthd = Berthd(
        base,
        config=f'version = 2\n[plugins."io.containerd.runtime.v2.task"]\n runc_root = "{root}"\n',
    )
    try:
        berthd.start()
        layout = write_oci_layout(base / "busybox.tar", busybox_image, image_name=IMAGE)
        berthd.ctr("images", "import", str(layout), namespace=NS)
        yield berthd, root
    finally:
        remove_all(functools.partial(berthd.ctr, namespace=NS))
        berthd.stop()
        gone = wait_until(lambda: not processes_mentioning(str(base)))
        cleanup_base(base)
    assert gone, processes_mentioning(str(base))


@pytest.mark.parametrize("runtime", [RUNC_SHIM, BERTH_SHIM])
def test_runc_root_setting_places_every_shims_runc_state(
    configured: tuple[Berthd, Path], runtime: str
) -> None:
    berthd, root = configured
    run_with_state_in(berthd, root, unique("conf"), "--runtime", runtime)
