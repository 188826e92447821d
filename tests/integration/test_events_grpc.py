"""The Events API of a real berthd over gRPC and ttrpc: error codes, and the SDK's subscriptions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2

from berth import errdefs
from berth.api.events import image_pb2, namespace_pb2
from berth.api.services.events.v1 import events_pb2 as pb
from berth.api.services.events.v1 import events_pb2_grpc as pb_grpc
from berth.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from berth.client import AsyncClient, Client
from berth.client._core import Event
from berth.ttrpc import Client as TtrpcClient
from tests.support.daemon import Berthd

pytestmark = pytest.mark.integration

NS = [("containerd-namespace", "default")]


@pytest.fixture
def stub(shared_berthd: Berthd) -> Iterator[pb_grpc.EventsStub]:
    with grpc.insecure_channel(f"unix:{shared_berthd.address}") as ch:
        yield pb_grpc.EventsStub(ch)


def _any(msg: object) -> any_pb2.Any:
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", 'envelope topic "": must not be empty'),
        ("tasks/exit", "must start with '/'"),
        ("/", "must have at least one component"),
        ("/a//b", 'failed validation on component ""'),
        ("/a/b$", 'failed validation on component "b$"'),
    ],
)
def test_publish_with_a_bad_topic_is_invalid_argument(
    stub: pb_grpc.EventsStub, topic: str, message: str
) -> None:
    ev = _any(image_pb2.ImageDelete(name="x"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Publish(pb.PublishRequest(topic=topic, event=ev), metadata=NS, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_publish_without_namespace_is_failed_precondition(stub: pb_grpc.EventsStub) -> None:
    ev = _any(image_pb2.ImageDelete(name="x"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Publish(pb.PublishRequest(topic="/a", event=ev), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "namespace is required" in (info.value.details() or "")


def test_publish_without_an_event_is_invalid_argument(stub: pb_grpc.EventsStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Publish(pb.PublishRequest(topic="/a"), metadata=NS, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries no event" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (pb.Envelope(namespace="default", topic="/a"), "timestamp must be set on forwarded event"),
        (pb.Envelope(namespace="bad/ns", topic="/a"), "event envelope has invalid namespace"),
    ],
)
def test_grpc_forward_refuses_bad_envelopes(
    stub: pb_grpc.EventsStub, envelope: pb.Envelope, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Forward(pb.ForwardRequest(envelope=envelope), metadata=NS, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_ttrpc_forward_refuses_an_envelope_without_timestamp(shared_berthd: Berthd) -> None:
    async def main() -> None:
        client = await TtrpcClient.connect(shared_berthd.address + ".ttrpc", timeout=5)
        try:
            env = ttrpc_pb.Envelope(namespace="default", topic="/tasks/exit")
            await client.call(
                "containerd.services.events.ttrpc.v1.Events",
                "Forward",
                ttrpc_pb.ForwardRequest(envelope=env),
                empty_pb2.Empty,
                timeout=5,
            )
        finally:
            await client.close()

    with pytest.raises(errdefs.InvalidArgument, match="timestamp must be set"):
        asyncio.run(main())


def _publish_until(stub: pb_grpc.EventsStub, done: threading.Event, name: str) -> None:
    # A subscription is live only once the server has it; keep publishing until
    # the reader has seen one, so the test does not depend on timing.
    while not done.wait(0.1):
        stub.Publish(
            pb.PublishRequest(
                topic="/sdk/test", event=_any(namespace_pb2.NamespaceCreate(name=name))
            ),
            metadata=[("containerd-namespace", "sdk-ns")],
            timeout=10,
        )


def test_sdk_subscribe_streams_decoded_events_until_closed(
    shared_berthd: Berthd, stub: pb_grpc.EventsStub
) -> None:
    done = threading.Event()
    publisher = threading.Thread(target=_publish_until, args=(stub, done, "sync-1"))
    with Client(shared_berthd.address) as c:
        stream = c.events.subscribe(['topic=="/sdk/test"', "event.name==nomatch"])
        publisher.start()
        try:
            with stream:
                event = next(iter(stream))
        finally:
            done.set()
            publisher.join()
        assert isinstance(event, Event)
        assert (event.namespace, event.topic) == ("sdk-ns", "/sdk/test")
        assert event.type_url == "containerd.events.NamespaceCreate"
        assert event.payload == {"name": "sync-1"}
        assert abs(event.timestamp.timestamp() - time.time()) < 60
        # Closed: iteration is over, however many events follow.
        assert list(stream) == []


def test_async_sdk_subscribe(shared_berthd: Berthd, stub: pb_grpc.EventsStub) -> None:
    done = threading.Event()
    publisher = threading.Thread(target=_publish_until, args=(stub, done, "async-1"))

    async def main() -> Event:
        async with AsyncClient(shared_berthd.address) as c:
            async with c.events.subscribe(["event.name==async-1"]) as stream:
                publisher.start()
                async for event in stream:
                    return event
        raise AssertionError("stream ended without an event")

    try:
        event = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        done.set()
        publisher.join()
    assert event.payload == {"name": "async-1"}


def test_sdk_subscribe_with_a_bad_filter_fails_with_containerds_code(shared_berthd: Berthd) -> None:
    with Client(shared_berthd.address) as c, c.events.subscribe(['topic=="x']) as stream:
        with pytest.raises(errdefs.BerthError) as info:
            next(stream)
    assert info.value.code == errdefs.CODE_UNKNOWN
    assert "failed parsing subscription filters" in str(info.value)


def test_sdk_subscribe_to_an_absent_daemon_is_unavailable() -> None:
    with Client("/nonexistent/berth.sock") as c, c.events.subscribe() as stream:
        with pytest.raises(errdefs.Unavailable, match="cannot connect to berthd"):
            next(stream)
