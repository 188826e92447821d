"""Publishing task events to the daemon.

containerd 1.6's v2 shims forward events over ttrpc to the daemon's
``<address>.ttrpc`` socket (``containerd.services.events.ttrpc.v1.Events/
Forward``), the address arriving in the ``TTRPC_ADDRESS`` environment
variable. :class:`Publisher` does the same, with one difference from Go's
publisher: events are sent strictly in order. A failed forward is retried
(reconnecting, with a capped back-off) before anything queued behind it, so
a daemon that restarts sees the events it missed, in the order they happened.

Topics are containerd's; payloads are wrapped in ``Any`` with containerd's
bare type URLs (``containerd.events.TaskExit``), as its ``typeurl`` package
writes them, so ``ctr events`` decodes them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from berth import errdefs
from berth.api.events import task_pb2
from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.ttrpc import Client

__all__ = ["TOPICS", "Publisher", "pack_any", "topic_of"]

log = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_TIMEOUT = 5.0
QUEUE_MAX = 4096
RETRY_MIN, RETRY_MAX = 0.05, 2.0

TOPICS: dict[type[Message], str] = {
    task_pb2.TaskCreate: "/tasks/create",
    task_pb2.TaskStart: "/tasks/start",
    task_pb2.TaskOOM: "/tasks/oom",
    task_pb2.TaskExit: "/tasks/exit",
    task_pb2.TaskDelete: "/tasks/delete",
    task_pb2.TaskExecAdded: "/tasks/exec-added",
    task_pb2.TaskExecStarted: "/tasks/exec-started",
    task_pb2.TaskPaused: "/tasks/paused",
    task_pb2.TaskResumed: "/tasks/resumed",
    task_pb2.TaskCheckpointed: "/tasks/checkpointed",
}


def topic_of(event: Message) -> str:
    topic = TOPICS.get(type(event))
    if topic is None:
        raise ValueError(f"no topic for {type(event).__name__}")
    return topic


def pack_any(msg: Message) -> any_pb2.Any:
    """An Any with containerd's type URL: the bare full message name."""
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def timestamp(t: float | None = None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    t = time.time() if t is None else t
    ts.seconds = int(t)
    ts.nanos = int((t - int(t)) * 1e9)
    return ts


class Publisher:
    """Ordered, retrying event forwarding to ``address`` (a ttrpc socket)."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._queue: collections.deque[events_pb2.ForwardRequest] = collections.deque()
        self._wakeup = asyncio.Event()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def publish(self, event: Message, *, when: float | None = None) -> None:
        """Queue ``event``; it is sent in the background, in order."""
        if not self.address:
            return
        envelope = events_pb2.Envelope(
            timestamp=timestamp(when),
            namespace=self.namespace,
            topic=topic_of(event),
            event=pack_any(event),
        )
        if len(self._queue) >= QUEUE_MAX:
            dropped = self._queue.popleft()
            log.error("event queue full, dropping %s", dropped.envelope.topic)
        self._queue.append(events_pb2.ForwardRequest(envelope=envelope))
        self._idle.clear()
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="publisher")

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _connect(self) -> Client:
        if self._client is None or self._client.closed:
            self._client = await Client.connect(self.address, timeout=FORWARD_TIMEOUT)
        return self._client

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            request = self._queue[0]
            try:
                client = await self._connect()
                await client.call(
                    EVENTS_SERVICE,
                    "Forward",
                    request,
                    empty_pb2.Empty,
                    timeout=FORWARD_TIMEOUT,
                )
            except (errdefs.Unavailable, errdefs.DeadlineExceeded, OSError) as exc:
                log.debug("forwarding %s failed (%s), retrying", request.envelope.topic, exc)
                await self._drop_client()
                if self._closing:
                    # Shutting down with the daemon gone: give up on the rest.
                    self._queue.clear()
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except errdefs.BerthError as exc:
                # The daemon rejected it; retrying would be rejected again.
                log.error("daemon refused event %s: %s", request.envelope.topic, exc)
            delay = RETRY_MIN
            self._queue.popleft()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued was delivered; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then disconnect."""
        await self.flush(timeout)
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._drop_client()
