"""The event exchange: validates, stamps and fans events out to subscribers.

:class:`Exchange` is what berthd installs with
:func:`berth.core.events.set_publisher`. Services hand it finished event
messages (:meth:`Exchange.publish`); the events service and the shim endpoint
hand it envelopes built elsewhere (:meth:`Exchange.forward`); ``Subscribe``
streams and in-process watchers read from :meth:`Exchange.subscribe`.

Design note: slow subscribers
=============================

containerd gives every subscriber an unbounded queue drained by its own
goroutine, so a publisher never waits, and a subscriber that stops reading
(a ``ctr events`` piped into a pager) makes the daemon's memory grow without
limit. Berth keeps the first property and refuses the second: each
subscription has a bounded queue, publishing only appends to queues and never
awaits, and a subscriber whose queue is full is *disconnected*: it is
detached from the exchange, still receives what was queued, and then its
iterator raises :class:`SubscriberTooSlow`.

Disconnecting was chosen over dropping events. A subscriber that silently
misses ``/tasks/exit`` holds a wrong picture of the world and cannot know it;
one that is disconnected knows it fell behind and can resubscribe and
re-read state. Either way the publisher and every other subscriber carry on
unaffected.

Ordering: a publish is delivered to every matching subscription before the
publishing call returns and without awaiting, so each subscriber sees events
in the order they were published or forwarded.

Payloads stay opaque here: the exchange carries ``Any`` values and only the
codec in :mod:`berth.core.events.typeurl` opens one, lazily, when a
subscription filters on ``event.<field>``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from google.protobuf import any_pb2
from google.protobuf.message import Message

from berth import errdefs, filters, identifiers
from berth.core.events import typeurl

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "ZERO_TIME_NS",
    "Envelope",
    "Exchange",
    "SubscriberTooSlow",
    "Subscription",
    "validate_envelope",
    "validate_topic",
]

log = logging.getLogger("berth.events")

#: Envelopes a subscription may hold unread before it is disconnected.
DEFAULT_QUEUE_SIZE = 4096

#: Go's zero ``time.Time`` (0001-01-01T00:00:00Z) in Unix nanoseconds: what an
#: envelope whose timestamp was never set decodes to in containerd, and how
#: Berth represents "no timestamp" so that :func:`validate_envelope` can refuse it.
ZERO_TIME_NS = -62_135_596_800 * 1_000_000_000

# gRPC's RESOURCE_EXHAUSTED: the subscriber used up its queue.
CODE_RESOURCE_EXHAUSTED = 8


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels: when, where, what kind, and the payload.

    ``event`` is the payload wrapped in a protobuf ``Any`` with containerd's
    type URL, or None when a forwarder sent none.
    """

    timestamp_ns: int
    namespace: str
    topic: str
    event: any_pb2.Any | None


class SubscriberTooSlow(errdefs.BerthError):
    """A subscription stopped reading and its queue filled up; it was disconnected."""

    code = CODE_RESOURCE_EXHAUSTED


def validate_topic(topic: str) -> None:
    """Refuse a topic containerd would refuse.

    A topic is ``/`` followed by one or more ``/``-separated components, each
    a valid identifier (``/tasks/exec-started``). Raises InvalidArgument whose
    message names the topic and the broken rule.
    """
    # Quoted as containerd quotes it, so messages read like containerd's.
    prefix = f"envelope topic {errdefs.go_quote(topic)}"
    if topic == "":
        raise errdefs.InvalidArgument(f"{prefix}: must not be empty")
    if topic[0] != "/":
        raise errdefs.InvalidArgument(f"{prefix}: must start with '/'")
    if len(topic) == 1:
        raise errdefs.InvalidArgument(f"{prefix}: must have at least one component")
    for component in topic[1:].split("/"):
        try:
            identifiers.validate(component)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(
                f"{prefix}: failed validation on component {errdefs.go_quote(component)}: {exc}"
            ) from None


def validate_envelope(envelope: Envelope) -> None:
    """Refuse a forwarded envelope containerd would refuse (InvalidArgument).

    Its namespace must be a valid identifier, its topic valid, and its
    timestamp set: a forwarder is the event's original publisher, so only it
    knows when the event happened.
    """
    try:
        identifiers.validate(envelope.namespace)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"event envelope has invalid namespace: {exc}") from None
    validate_topic(envelope.topic)
    if envelope.timestamp_ns == ZERO_TIME_NS:
        raise errdefs.InvalidArgument("timestamp must be set on forwarded event")


class _EnvelopeFields:
    """The filter view of an envelope: ``namespace``, ``topic``, ``event.<field>``.

    The payload is decoded at most once per envelope, however many
    subscriptions look at it, and only if one filters on it.
    """

    __slots__ = ("_decoded", "_envelope", "_tried")

    def __init__(self, envelope: Envelope) -> None:
        self._envelope = envelope
        self._decoded: Message | None = None
        self._tried = False

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        env = self._envelope
        match path[0]:
            case "namespace":
                return env.namespace, env.namespace != ""
            case "topic":
                return env.topic, env.topic != ""
            case "event":
                msg = self._payload()
                if msg is None:
                    return "", False
                return typeurl.field_adaptor(msg).field(path[1:])
        return "", False

    def _payload(self) -> Message | None:
        if not self._tried:
            self._tried = True
            if self._envelope.event is not None:
                try:
                    self._decoded = typeurl.unmarshal_any(self._envelope.event)
                except errdefs.BerthError:
                    # An undecodable payload has no fields, as in containerd.
                    self._decoded = None
        return self._decoded


class Subscription:
    """A stream of envelopes matching a subscription's filters.

    Iterate it with ``async for``; iteration ends when the subscription is
    closed (by :meth:`close` or by the exchange closing) and raises
    :class:`SubscriberTooSlow` after a disconnect for falling behind. Use it
    as an async context manager, or call :meth:`close`, to detach.
    """

    def __init__(self, exchange: Exchange, flt: filters.Filter, queue_size: int) -> None:
        self._exchange = exchange
        self.filter = flt
        self._queue: collections.deque[Envelope] = collections.deque()
        self._queue_size = queue_size
        self._wakeup = asyncio.Event()
        self._ended = False  # no more envelopes will be queued
        self._stopped = False  # the reader closed it: stop at once
        self._error: BaseException | None = None

    @property
    def pending(self) -> int:
        """Envelopes queued and not yet read."""
        return len(self._queue)

    def _offer(self, envelope: Envelope) -> None:
        """Queue ``envelope`` without waiting; disconnect if the queue is full."""
        if self._ended:
            return
        if len(self._queue) >= self._queue_size:
            self._error = SubscriberTooSlow(
                f"event subscriber fell behind: {self._queue_size} events were waiting"
                " unread, so it was disconnected; subscribe again to continue"
            )
            log.warning(
                "disconnecting slow event subscriber",
                extra={"fields": {"queued": len(self._queue), "dropped_topic": envelope.topic}},
            )
            self._end()
            return
        self._queue.append(envelope)
        self._wakeup.set()

    def end(self) -> None:
        """Detach from the exchange; iteration ends once the queue is drained."""
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._exchange._detach(self)
            self._wakeup.set()

    def close(self) -> None:
        """Detach from the exchange; iteration stops, dropping anything unread."""
        self._stopped = True
        self._queue.clear()
        self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            if self._stopped:
                raise StopAsyncIteration
            if self._queue:
                return self._queue.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Exchange:
    """Fans events out to subscriptions; implements the ``Publisher`` protocol.

    All methods must be called from the event loop that owns the exchange.
    None of them waits on a subscriber.
    """

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self._subscriptions: list[Subscription] = []
        self._closed = False

    @property
    def subscribers(self) -> int:
        """How many subscriptions are attached."""
        return len(self._subscriptions)

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        """Stamp ``event`` with the current time and deliver it under ``topic``.

        ``event`` is a protobuf message (wrapped in an ``Any`` with
        containerd's type URL) or an ``Any`` (sent as is). Raises
        FailedPrecondition without a namespace, InvalidArgument for an invalid
        namespace or topic, and TypeError for a payload that is not protobuf.
        """
        if not namespace:
            raise errdefs.FailedPrecondition("failed publishing event: namespace is required")
        try:
            identifiers.validate(namespace)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"namespace validation: {exc}") from None
        validate_topic(topic)
        envelope = Envelope(time.time_ns(), namespace, topic, typeurl.marshal_any(event))
        self._broadcast(envelope, "published")

    async def forward(self, envelope: Envelope) -> None:
        """Deliver an envelope someone else built (a shim, a peer) unchanged.

        Raises InvalidArgument when :func:`validate_envelope` refuses it.
        """
        validate_envelope(envelope)
        self._broadcast(envelope, "forwarded")

    def subscribe(
        self, filter_strings: Sequence[str] = (), *, queue_size: int | None = None
    ) -> Subscription:
        """A new subscription to events matching any of ``filter_strings``.

        Filters use containerd's syntax over ``topic``, ``namespace`` and
        ``event.<field>`` (e.g. ``topic~="/tasks/"``,
        ``event.container_id==abc``); no filters means every event in every
        namespace. Raises InvalidArgument (a
        :class:`~berth.filters.FilterSyntaxError`) for a malformed filter and
        Unavailable once the exchange is closed.
        """
        if isinstance(filter_strings, str):
            raise TypeError("subscribe takes a sequence of filter strings, not one string")
        if self._closed:
            raise errdefs.Unavailable("event exchange is shut down")
        flt = filters.parse_all(list(filter_strings))
        sub = Subscription(self, flt, queue_size or self.queue_size)
        self._subscriptions.append(sub)
        return sub

    def close(self) -> None:
        """End every subscription (each still yields what it had queued)."""
        self._closed = True
        for sub in list(self._subscriptions):
            sub._end()

    def _detach(self, sub: Subscription) -> None:
        try:
            self._subscriptions.remove(sub)
        except ValueError:
            pass

    def _broadcast(self, envelope: Envelope, how: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                f"event {how}",
                extra={
                    "fields": {
                        "topic": envelope.topic,
                        "ns": envelope.namespace,
                        "type": envelope.event.type_url if envelope.event is not None else "",
                    }
                },
            )
        if self._closed or not self._subscriptions:
            return
        fields = _EnvelopeFields(envelope)
        # Iterate over a copy: a disconnect removes the subscription mid-loop.
        for sub in list(self._subscriptions):
            if sub.filter.match(fields):
                sub._offer(envelope)
