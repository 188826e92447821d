"""Task events look the same whoever sends them: containerd and berthd, either shim.

The same container lifecycle (run, label, exec, pause, resume, OOM kill of an
exec, kill, delete) runs on Debian's containerd 1.6 and on berthd, each under
containerd's runc shim and under Berth's, while the real ``ctr events``
watches. For every topic, the payloads ctr prints must have the same shape
(the same fields, nested the same way) in all four runs: ctr omits empty
fields, so a field one shim fills and another leaves empty shows up here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_events_ctr import Watcher, watching
from tests.support.containerd_peer import Containerd, available
from tests.support.daemon import Berthd, running_berthd
from tests.support.imagebuilder import build_busybox_image, write_oci_layout
from tests.support.oci_bundle import cleanup_base, short_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="containerd, ctr or runc not installed"),
]

IMAGE = "docker.io/library/berth-parity:1"
NAMESPACE = "berth-test"  # the peer's ctr always uses it; berthd's run uses it too
RUNTIMES = ("io.containerd.runc.v2", "io.containerd.berth.v2")

Peer = Containerd | Berthd


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, Peer]]:
    base = short_dir("b.cd.")
    tar = write_oci_layout(base / "busybox.tar", build_busybox_image(), image_name=IMAGE)
    containerd = Containerd(base)
    try:
        containerd.start()
        with running_berthd() as berthd:
            both: dict[str, Peer] = {"containerd": containerd, "berthd": berthd}
            for peer in both.values():
                ctr(peer, "images", "import", str(tar))
            yield both
    finally:
        containerd.stop()
        cleanup_base(base)


def ctr(peer: Peer, *args: str, check: bool = True) -> Any:
    if isinstance(peer, Berthd):
        return peer.ctr(*args, namespace=NAMESPACE, check=check)
    return peer.ctr(*args, check=check)


def shape(value: Any) -> Any:
    """``value`` with every scalar replaced by its type's name."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def lifecycle(peer: Peer, w: Watcher, runtime: str) -> list[str]:
    """Drive two containers through everything task events report; their ids."""
    cid, oom = f"par-{uuid.uuid4().hex[:8]}", f"paroom-{uuid.uuid4().hex[:8]}"
    try:
        ctr(peer, "run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "300")
        ctr(peer, "containers", "label", cid, "stage=parity")
        ctr(peer, "tasks", "exec", "--exec-id", "e1", cid, "true")
        ctr(peer, "tasks", "pause", cid)
        ctr(peer, "tasks", "resume", cid)
        ctr(peer, "tasks", "kill", "-s", "SIGKILL", cid)
        w.expect("/tasks/exit", container_id=cid, id=cid)
        ctr(peer, "tasks", "rm", cid)
        ctr(peer, "containers", "rm", cid)

        limit = str(8 << 20)
        ctr(
            peer,
            "run",
            "-d",
            "--runtime",
            runtime,
            "--memory-limit",
            limit,
            IMAGE,
            oom,
            "sleep",
            "300",
        )
        hog = ctr(peer, "tasks", "exec", "--exec-id", "hog", oom, "tail", "/dev/zero", check=False)
        assert hog.returncode == 137, hog.stderr
        w.expect("/tasks/oom", container_id=oom)
        ctr(peer, "tasks", "rm", "-f", oom)
        ctr(peer, "containers", "rm", oom)
        # A shim's events arrive in order and the daemon's too, so with both
        # streams' last events printed, everything before them is in.
        for c in (cid, oom):
            w.expect("/tasks/delete", container_id=c)
            w.expect("/containers/delete", id=c)
    finally:
        for c in (cid, oom):
            ctr(peer, "tasks", "rm", "-f", c, check=False)
            ctr(peer, "containers", "rm", c, check=False)
    return [cid, oom]


def shapes_by_topic(w: Watcher, ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in w.lines:
        payload = ln.payload if isinstance(ln.payload, dict) else {}
        owner = payload.get("container_id") or payload.get("id") or payload.get("key")
        if owner in ids:
            label = "cid" if owner == ids[0] else "oom"
            out.setdefault(f"{label} {ln.namespace} {ln.topic}", []).append(repr(shape(payload)))
    # One OOM kill raises one or two notifications of the memory cgroup,
    # as the kernel's reclaim goes; both shims forward each one. Only the
    # OOM event's shape is compared, not how often it came.
    return {
        topic: sorted(set(found) if topic.endswith("/tasks/oom") else found)
        for topic, found in out.items()
    }


def test_task_event_payloads_match_containerds_on_both_daemons_and_shims(
    peers: dict[str, Peer],
) -> None:
    seen: dict[tuple[str, str], dict[str, list[str]]] = {}
    for name, peer in peers.items():
        with watching(peer) as w:
            for runtime in RUNTIMES:
                ids = lifecycle(peer, w, runtime)
                seen[name, runtime] = shapes_by_topic(w, ids)
    reference = seen["containerd", "io.containerd.runc.v2"]
    assert {
        "cid berth-test /tasks/create",
        "cid berth-test /tasks/exec-started",
        "cid berth-test /tasks/delete",
        "cid berth-test /containers/update",
        "oom berth-test /tasks/oom",
    } <= set(reference)
    # containerd's shim leaves TaskDelete's id empty, so ctr prints none.
    assert "'id'" not in "".join(reference["cid berth-test /tasks/delete"])
    # Daemons agree for each shim (the container's runtime options differ
    # between shims, so each is compared with containerd running it)...
    for runtime in RUNTIMES:
        assert seen["berthd", runtime] == seen["containerd", runtime], runtime
    # ...and the shims agree on every task event, under either daemon.
    for name in peers:
        by_shim = [
            {topic: v for topic, v in seen[name, runtime].items() if " /tasks/" in topic}
            for runtime in RUNTIMES
        ]
        assert by_shim[0] == by_shim[1], name
