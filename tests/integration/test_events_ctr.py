"""Events end to end: Debian's real ``ctr events`` and ``berth events`` against a real berthd.

Each test starts a watcher process, waits until it is provably subscribed (a
marker event published over gRPC shows up in its output), then makes changes
with the real ctr, or forwards a task event the way a shim does over ttrpc, and
checks that the watcher printed each topic with a decoded JSON payload.

The helpers here (:class:`Watcher`, :func:`watching`, :func:`forward_as_shim`)
are shared with the other events tests; they work against any daemon ctr can
reach, the containerd peer included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from berth.api.events import namespace_pb2, task_pb2
from berth.api.services.events.v1 import events_pb2 as events_pb
from berth.api.services.events.v1 import events_pb2_grpc as events_grpc
from berth.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb
from berth.ttrpc import Client as TtrpcClient
from tests.support.daemon import Berthd, env_with_src, running_berthd
from tests.support.imagebuilder import build_image, marker_layer_spec, write_oci_layout

pytestmark = pytest.mark.integration

READY_TOPIC = "/test/ready"
_probe_ids = itertools.count()


class Daemon(Protocol):
    """berthd or the containerd peer: anything ctr reaches at ``address``."""

    address: str


@dataclass(frozen=True)
class Line:
    """One printed event: ``TIMESTAMP NAMESPACE TOPIC {json}``."""

    text: str
    namespace: str
    topic: str
    payload: Any


def parse_line(text: str) -> Line | None:
    # Go's time.Time.String() is four space-separated words.
    parts = text.rstrip("\n").split(" ", 6)
    if len(parts) < 6 or parts[3] != "UTC":
        return None
    body = parts[6] if len(parts) == 7 else ""
    return Line(text, parts[4], parts[5], json.loads(body) if body else None)


class Watcher:
    """A running ``ctr events`` (or ``berth events``) whose output is collected."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[Line] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self._queue.put(text)
        self._queue.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            self.stderr.append(text)

    def wait_for(self, pred: Callable[[Line], bool], timeout: float = 15.0) -> Line:
        """The first new line matching ``pred``; fails with everything seen so far."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                text = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if text is None:
                break
            line = parse_line(text)
            assert line is not None, f"unexpected output from {self.argv[0]}: {text!r}"
            self.lines.append(line)
            if pred(line):
                return line
        raise AssertionError(
            f"{' '.join(self.argv)} did not print the expected event in {timeout}s;"
            f" exit={self.proc.poll()}\nstdout:\n"
            + "".join(ln.text for ln in self.lines)
            + "stderr:\n"
            + "".join(self.stderr)
        )

    def wait_topic(self, topic: str, **match: Any) -> Line:
        """The next new line on ``topic`` whose payload has the ``match`` fields."""
        return self.wait_for(_matcher(topic, match))

    def expect(self, topic: str, **match: Any) -> Line:
        """Like :meth:`wait_topic`, but a line printed earlier also counts.

        For events whose relative order is not fixed (a shim's events reach
        the daemon over their own connection, racing the daemon's own).
        """
        pred = _matcher(topic, match)
        for line in self.lines:
            if pred(line):
                return line
        return self.wait_for(pred)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the watcher to exit on its own; its exit code, with all output read."""
        code = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _matcher(topic: str, match: dict[str, Any]) -> Callable[[Line], bool]:
    def pred(line: Line) -> bool:
        if line.topic != topic:
            return False
        return all(
            isinstance(line.payload, dict) and line.payload.get(k) == v for k, v in match.items()
        )

    return pred


def publish(d: Daemon, topic: str, event: Any, namespace: str = "default") -> None:
    """Publish through berthd's gRPC Events service, as a client would."""
    wrapped = any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())
    with grpc.insecure_channel(f"unix:{d.address}") as ch:
        events_grpc.EventsStub(ch).Publish(
            events_pb.PublishRequest(topic=topic, event=wrapped),
            metadata=[("containerd-namespace", namespace)],
            timeout=10,
        )


def wait_subscribed(d: Daemon, w: Watcher, timeout: float = 20.0) -> None:
    """Publish marker events until the watcher prints one: from then on it sees everything."""
    deadline = time.monotonic() + timeout
    while True:
        name = f"ready-{next(_probe_ids)}"
        publish(d, READY_TOPIC, namespace_pb2.NamespaceCreate(name=name))
        try:
            w.wait_for(lambda ln: ln.topic == READY_TOPIC, timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline or w.proc.poll() is not None:
                raise


@contextlib.contextmanager
def watching(d: Daemon, *filters: str, berth_cli: bool = False) -> Iterator[Watcher]:
    if berth_cli:
        argv = [sys.executable, "-m", "berth.cli.main", "--address", d.address, "events", *filters]
        w = Watcher(argv, env=env_with_src())
    else:
        w = Watcher(["ctr", "--address", d.address, "events", *filters])
    try:
        if not filters:
            wait_subscribed(d, w)
        yield w
    finally:
        w.stop()
    assert not any("unmarshal" in e for e in w.stderr), "".join(w.stderr)


def forward_as_shim(d: Berthd, envelope: ttrpc_events_pb.Envelope) -> None:
    """Send an envelope the way containerd-shim-*-v2 does: ttrpc Forward to <address>.ttrpc."""

    async def main() -> None:
        client = await TtrpcClient.connect(d.address + ".ttrpc", timeout=5)
        try:
            await client.call(
                "containerd.services.events.ttrpc.v1.Events",
                "Forward",
                ttrpc_events_pb.ForwardRequest(envelope=envelope),
                empty_pb2.Empty,
                timeout=5,
            )
        finally:
            await client.close()

    asyncio.run(main())


def forward_over_grpc(d: Berthd, envelope: ttrpc_events_pb.Envelope) -> None:
    """Send an envelope through berthd's gRPC Events/Forward, the relay any client may use."""
    wire = events_pb.Envelope.FromString(envelope.SerializeToString())
    with grpc.insecure_channel(f"unix:{d.address}") as ch:
        events_grpc.EventsStub(ch).Forward(events_pb.ForwardRequest(envelope=wire), timeout=10)


def shim_envelope(topic: str, event: Message, namespace: str) -> ttrpc_events_pb.Envelope:
    """``event`` in an envelope as a shim sends it: containerd's bare type URL, stamped now."""
    env = ttrpc_events_pb.Envelope(
        namespace=namespace,
        topic=topic,
        event=any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()),
    )
    env.timestamp.GetCurrentTime()
    return env


def task_exit_envelope(container_id: str, namespace: str = "default") -> ttrpc_events_pb.Envelope:
    exit_ = task_pb2.TaskExit(container_id=container_id, id=container_id, pid=4242, exit_status=7)
    exit_.exited_at.GetCurrentTime()
    return shim_envelope("/tasks/exit", exit_, namespace)


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    image = build_image([marker_layer_spec("events")])
    dest = tmp_path_factory.mktemp("events") / "image.tar"
    write_oci_layout(dest, image, image_name="docker.io/library/evt:1")
    return str(dest)


# --- tests ---------------------------------------------------------------------------------------


def test_ctr_events_decodes_every_store_event(shared_berthd: Berthd, image_tar: str) -> None:
    d = shared_berthd
    with watching(d) as w:
        d.ctr("namespaces", "create", "evt-ns", "team=infra")
        assert w.wait_topic("/namespaces/create", name="evt-ns").payload["labels"] == {
            "team": "infra"
        }
        d.ctr("namespaces", "label", "evt-ns", "team=core")
        assert w.wait_topic("/namespaces/update", name="evt-ns").namespace == "default"
        d.ctr("namespaces", "remove", "evt-ns")
        # Deletions are announced in the deleted namespace, as containerd does.
        assert w.wait_topic("/namespaces/delete", name="evt-ns").namespace == "evt-ns"

        d.ctr("images", "import", "--no-unpack", image_tar, namespace="evt")
        created = w.wait_topic("/images/create", name="docker.io/library/evt:1")
        assert created.namespace == "evt"
        d.ctr("images", "label", "docker.io/library/evt:1", "stage=test", namespace="evt")
        updated = w.wait_topic("/images/update", name="docker.io/library/evt:1")
        assert updated.payload["labels"]["stage"] == "test"
        digests = d.ctr("content", "ls", "-q", namespace="evt").stdout.split()
        assert digests
        d.ctr("content", "rm", digests[0], namespace="evt")
        assert w.wait_topic("/content/delete", digest=digests[0]).namespace == "evt"
        d.ctr("images", "rm", "docker.io/library/evt:1", namespace="evt")
        w.wait_topic("/images/delete", name="docker.io/library/evt:1")

        snap = ["snapshots", "--snapshotter", "native"]
        d.ctr(*snap, "prepare", "evt-active", namespace="evt")
        assert w.wait_topic("/snapshot/prepare", key="evt-active").namespace == "evt"
        d.ctr(*snap, "commit", "evt-committed", "evt-active", namespace="evt")
        w.wait_topic("/snapshot/commit", key="evt-active", name="evt-committed")
        d.ctr(*snap, "prepare", "evt-child", "evt-committed", namespace="evt")
        w.wait_topic("/snapshot/prepare", key="evt-child", parent="evt-committed")
        d.ctr(*snap, "rm", "evt-child", namespace="evt")
        w.wait_topic("/snapshot/remove", key="evt-child")
    # Every line ctr printed carried a decoded payload.
    assert all(isinstance(ln.payload, dict) and ln.payload for ln in w.lines)


def test_a_shims_task_exit_over_ttrpc_reaches_ctr_and_berth_events(shared_berthd: Berthd) -> None:
    d = shared_berthd
    sock = os.stat(d.address + ".ttrpc")
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o660
    with watching(d) as ctr_w, watching(d, berth_cli=True) as berth_w:
        forward_as_shim(d, task_exit_envelope("shim-c1", namespace="evt-tasks"))
        for w in (ctr_w, berth_w):
            line = w.wait_topic("/tasks/exit", container_id="shim-c1")
            assert line.namespace == "evt-tasks"
            assert line.payload["pid"] == 4242
            assert line.payload["exit_status"] == 7
            assert line.payload["exited_at"].endswith("Z")


def test_task_checkpointed_from_a_shim_reaches_ctr_decoded(shared_berthd: Berthd) -> None:
    # CRIU cannot dump on every host, so the event is sent the way a shim
    # sends it after a checkpoint, through both of berthd's Forward doors.
    d = shared_berthd
    checkpoint = "sha256:" + "c" * 64
    with watching(d) as w:
        for container_id, forward in (
            ("ckpt-ttrpc", forward_as_shim),
            ("ckpt-grpc", forward_over_grpc),
        ):
            event = task_pb2.TaskCheckpointed(container_id=container_id, checkpoint=checkpoint)
            forward(d, shim_envelope("/tasks/checkpointed", event, "evt-ckpt"))
            line = w.wait_topic("/tasks/checkpointed", container_id=container_id)
            assert line.namespace == "evt-ckpt"
            assert line.payload == {"container_id": container_id, "checkpoint": checkpoint}


def test_ctr_events_topic_and_payload_filters(shared_berthd: Berthd, image_tar: str) -> None:
    d = shared_berthd
    with (
        watching(d, 'topic~="/images/"') as images_only,
        watching(d, "namespace==evt-f2", "event.container_id==shim-f1") as either,
    ):
        # Filtered watchers cannot see the readiness marker; wait for them to
        # subscribe by repeating a matching event until each prints it.
        for w, make in (
            (
                images_only,
                lambda: publish(d, "/images/probe", namespace_pb2.NamespaceCreate(name="p")),
            ),
            (either, lambda: forward_as_shim(d, task_exit_envelope("shim-f1"))),
        ):
            deadline = time.monotonic() + 20
            while True:
                make()
                try:
                    w.wait_for(lambda ln: True, timeout=0.5)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
        d.ctr("namespaces", "create", "evt-f1")
        d.ctr("images", "import", "--no-unpack", image_tar, namespace="evt-f2")
        forward_as_shim(d, task_exit_envelope("shim-f1"))
        forward_as_shim(d, task_exit_envelope("shim-other"))
        images_only.wait_topic("/images/create", name="docker.io/library/evt:1")
        either.wait_topic("/images/create", name="docker.io/library/evt:1")
        either.wait_topic("/tasks/exit", container_id="shim-f1")
        # A last event both filters take, so nothing earlier is still in flight.
        d.ctr("images", "rm", "docker.io/library/evt:1", namespace="evt-f2")
        images_only.wait_topic("/images/delete")
        either.wait_topic("/images/delete")
    assert {ln.topic for ln in images_only.lines} <= {
        "/images/probe",
        "/images/create",
        "/images/update",
        "/images/delete",
    }
    assert "/namespaces/create" not in {ln.topic for ln in either.lines}
    assert all(
        ln.namespace == "evt-f2" or (ln.payload or {}).get("container_id") == "shim-f1"
        for ln in either.lines
    )


def test_malformed_filters_fail_like_containerd(shared_berthd: Berthd) -> None:
    d = shared_berthd
    res = d.ctr("events", 'topic=="unterminated', check=False, timeout=20)
    assert res.returncode == 1
    assert "code = Unknown" in res.stderr
    assert "subscription error: failed parsing subscription filters" in res.stderr
    assert "quoted literal not terminated" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "-a", d.address, "events", "topic==,"],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=30,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("berth: subscription error: failed parsing subscription filters")


def test_berthd_ends_subscriber_streams_itself_when_it_stops() -> None:
    with running_berthd() as d, watching(d) as w:
        # Berthd.stop SIGKILLs a daemon that outlives its timeout: a hang
        # fails the exit code check below instead of blocking the test.
        code = d.stop()
        ctr_code = w.wait_exit(30)
        stderr = "".join(w.stderr)
    assert code == 0, d.logs()[-2000:]
    # ctr saw the server finish the stream (Go's io.EOF). A stream left for
    # gRPC's shutdown grace period to cut off reads "rpc error: code =
    # Unavailable desc = Cancelling all calls" instead.
    assert (ctr_code, stderr) == (1, "ctr: EOF\n")
    assert not os.path.exists(d.address + ".ttrpc")
