"""The two doors into the event exchange: the gRPC Events service and the shims' ttrpc socket.

* ``io.containerd.grpc.v1.events`` serves ``containerd.services.events.v1.Events``
  (Publish, Forward, Subscribe) on berthd's gRPC socket; this is what
  ``ctr events`` and the SDK's ``client.events.subscribe`` read.
* ``io.containerd.internal.v1.shim-events`` listens on ``<address>.ttrpc``
  (``Config.ttrpc_address``) and serves
  ``containerd.services.events.ttrpc.v1.Events/Forward``, where v2 shims send
  their task events (the address reaches them as ``TTRPC_ADDRESS``). containerd
  serves this on its built-in ttrpc server; Berth makes it a plugin so that its
  socket opens at boot and closes at shutdown with the rest of the plugins.

Both only translate between wire messages and
:class:`berth.core.events.exchange.Envelope`; the rules live in the exchange.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from berth import errdefs, plugin
from berth.api.services.events.v1 import events_pb2 as pb
from berth.api.services.events.v1 import events_pb2_grpc as pb_grpc
from berth.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from berth.core.events.exchange import ZERO_TIME_NS, Envelope, Exchange, Subscription
from berth.core.events.plugin import EXCHANGE_ID
from berth.services.server import namespace
from berth.ttrpc import CallContext, Server

log = logging.getLogger("berth.events")

TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"
SHIM_EVENTS_ID = "shim-events"
# How long shutdown waits for a shim's Forward already in progress.
TTRPC_SHUTDOWN_GRACE = 2.0


class _WireEnvelope(Protocol):
    """The gRPC and ttrpc Envelope messages: same fields, different classes."""

    timestamp: timestamp_pb2.Timestamp
    namespace: str
    topic: str
    event: any_pb2.Any

    def HasField(self, field_name: str) -> bool: ...


def envelope_from_pb(msg: _WireEnvelope) -> Envelope:
    """A wire envelope as the exchange's record.

    An unset timestamp becomes :data:`ZERO_TIME_NS`, Go's zero time, which
    the exchange refuses on Forward, as containerd does.
    """
    ts = msg.timestamp.ToNanoseconds() if msg.HasField("timestamp") else ZERO_TIME_NS
    event: any_pb2.Any | None = None
    if msg.HasField("event"):
        event = any_pb2.Any()
        event.CopyFrom(msg.event)
    return Envelope(timestamp_ns=ts, namespace=msg.namespace, topic=msg.topic, event=event)


def envelope_to_pb(env: Envelope) -> pb.Envelope:
    out = pb.Envelope(namespace=env.namespace, topic=env.topic)
    out.timestamp.FromNanoseconds(env.timestamp_ns)
    if env.event is not None:
        out.event.CopyFrom(env.event)
    return out


class EventsService(pb_grpc.EventsServicer):
    """containerd.services.events.v1.Events over an :class:`Exchange`."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._streams: set[Subscription] = set()

    def end_streams(self) -> None:
        """End every Subscribe stream after what it has queued (berthd is stopping).

        containerd stops its gRPC server outright; berthd stops gracefully,
        and without this a connected ``ctr events`` would hold shutdown for
        the whole grace period.
        """
        for sub in list(self._streams):
            sub.end()

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_EventsServicer_to_server(self, server)

    async def Publish(self, request: pb.PublishRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        if not request.HasField("event"):
            raise errdefs.InvalidArgument(
                f"publish {request.topic!r}: the request carries no event"
            )
        event = any_pb2.Any()
        event.CopyFrom(request.event)
        # The client's Any goes out as sent, type URL included, as in containerd.
        await self.exchange.publish(ns, request.topic, event)
        return empty_pb2.Empty()

    async def Forward(self, request: pb.ForwardRequest, context: Any) -> empty_pb2.Empty:
        await self.exchange.forward(envelope_from_pb(request.envelope))
        return empty_pb2.Empty()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.Envelope]:
        try:
            sub = self.exchange.subscribe(list(request.filters))
        except errdefs.InvalidArgument as exc:
            # containerd reports a bad filter through the stream's error
            # channel without a status code, so clients see UNKNOWN with this
            # text; Berth returns the same code and wording.
            raise errdefs.BerthError(
                f"subscription error: failed parsing subscription filters: {exc}"
            ) from None
        # Leaving this block, by client disconnect (the handler is cancelled),
        # error or shutdown, detaches the subscription.
        self._streams.add(sub)
        try:
            async with sub:
                async for env in sub:
                    yield envelope_to_pb(env)
        finally:
            self._streams.discard(sub)


def _exchange(ic: plugin.InitContext) -> Exchange:
    exchange: Exchange = ic.get_by_id(plugin.EVENT, EXCHANGE_ID)
    return exchange


def _init_grpc(ic: plugin.InitContext) -> EventsService:
    return EventsService(_exchange(ic))


class ShimEvents:
    """The ttrpc endpoint shims forward their events to."""

    def __init__(self, exchange: Exchange, address: str) -> None:
        self.exchange = exchange
        self.address = address
        self.server = Server()
        self.server.register_service(
            ttrpc_pb.DESCRIPTOR.services_by_name["Events"], {"Forward": self.Forward}
        )

    async def Forward(self, ctx: CallContext, request: ttrpc_pb.ForwardRequest) -> empty_pb2.Empty:
        await self.exchange.forward(envelope_from_pb(request.envelope))
        return empty_pb2.Empty()

    async def start(self) -> None:
        """Listen on the address with mode 0660, as berthd's gRPC socket.

        The umask makes the socket 0660 from the moment it exists, so there is
        no instant in which another user could connect; berthd applies the
        configured owner (``[ttrpc] uid/gid``) after plugins load.
        """
        os.makedirs(os.path.dirname(self.address) or ".", mode=0o711, exist_ok=True)
        old = os.umask(0o117)
        try:
            await self.server.start(self.address, mode=0o660)
        finally:
            os.umask(old)
        log.info("serving shim events", extra={"fields": {"address": self.address}})

    async def close(self) -> None:
        await self.server.shutdown(timeout=TTRPC_SHUTDOWN_GRACE)


async def _init_shim_events(ic: plugin.InitContext) -> ShimEvents:
    if not ic.ttrpc_address:
        raise plugin.SkipPlugin("no ttrpc address configured")
    endpoint = ShimEvents(_exchange(ic), ic.ttrpc_address.removeprefix("unix://"))
    await endpoint.start()
    return endpoint


async def _close_shim_events(endpoint: ShimEvents) -> None:
    await endpoint.close()


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="events", init=_init_grpc, requires=(plugin.EVENT,))
)
plugin.register(
    plugin.Registration(
        type=plugin.INTERNAL,
        id=SHIM_EVENTS_ID,
        init=_init_shim_events,
        requires=(plugin.EVENT,),
        close=_close_shim_events,
    )
)
