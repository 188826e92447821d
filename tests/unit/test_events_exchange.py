"""The event exchange: topic rules, envelopes, filters, ordering, slow subscribers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from google.protobuf import any_pb2

from berth import errdefs, filters
from berth.api.events import container_pb2, image_pb2, namespace_pb2, task_pb2
from berth.core import events
from berth.core.events import plugin as events_plugin
from berth.core.events.exchange import (
    ZERO_TIME_NS,
    Envelope,
    Exchange,
    SubscriberTooSlow,
    Subscription,
    validate_topic,
)

T = TypeVar("T")


def run(aw: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(aw, 10)

    return asyncio.run(main())


def drain(sub: Subscription) -> list[Envelope]:
    """What a subscription has queued right now, without waiting for more."""
    out = []
    while sub.pending:
        out.append(run_anext(sub))
    return out


def run_anext(sub: Subscription) -> Envelope:
    # __anext__ returns at once when something is queued; drive it by hand so
    # tests can inspect a subscription between publishes.
    coro = sub.__anext__()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("subscription had nothing queued")


# --- topics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["/tasks/exit", "/tasks/exec-started", "/snapshot/prepare", "/a", "/a.b/c_d/e-f"],
)
def test_valid_topics_pass(topic: str) -> None:
    validate_topic(topic)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "must not be empty"),
        ("tasks/exit", "must start with '/'"),
        ("/", "must have at least one component"),
        ("/tasks//exit", 'failed validation on component ""'),
        ("/tasks/exit/", 'failed validation on component ""'),
        ("/tasks/ex it", 'failed validation on component "ex it"'),
        ("/tasks/-exit", 'failed validation on component "-exit"'),
        ("/" + "a" * 77, "greater than maximum length"),
    ],
)
def test_invalid_topics_are_invalid_argument_naming_the_rule(topic: str, reason: str) -> None:
    with pytest.raises(errdefs.InvalidArgument) as info:
        validate_topic(topic)
    assert reason in str(info.value)
    assert str(info.value).startswith('envelope topic "')


# --- publish and forward ------------------------------------------------------------------


def test_publish_wraps_the_event_with_containerds_bare_type_url() -> None:
    async def main() -> Envelope:
        ex = Exchange()
        sub = ex.subscribe()
        await ex.publish("default", "/tasks/exit", task_pb2.TaskExit(container_id="c1", pid=7))
        return await sub.__anext__()

    before = time.time_ns()
    env = run(main())
    assert env.namespace == "default"
    assert env.topic == "/tasks/exit"
    assert env.event is not None
    assert env.event.type_url == "containerd.events.TaskExit"
    decoded = task_pb2.TaskExit.FromString(env.event.value)
    assert (decoded.container_id, decoded.pid) == ("c1", 7)
    assert before <= env.timestamp_ns <= time.time_ns()


def test_publish_passes_an_any_through_unchanged() -> None:
    payload = any_pb2.Any(type_url="example.com/custom", value=b"\x01\x02")

    async def main() -> Envelope:
        ex = Exchange()
        sub = ex.subscribe()
        await ex.publish("ns1", "/custom/thing", payload)
        return await sub.__anext__()

    env = run(main())
    assert env.event == payload


def test_publish_without_namespace_is_failed_precondition() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        run(Exchange().publish("", "/a", image_pb2.ImageDelete(name="x")))


def test_publish_with_invalid_namespace_is_invalid_argument() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="namespace validation"):
        run(Exchange().publish("bad/ns", "/a", image_pb2.ImageDelete(name="x")))


def test_publish_with_invalid_topic_is_invalid_argument() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="must start with '/'"):
        run(Exchange().publish("default", "images/delete", image_pb2.ImageDelete(name="x")))


def test_publish_of_a_non_protobuf_payload_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="protobuf message"):
        run(Exchange().publish("default", "/a", {"name": "x"}))


def _envelope(**kw: object) -> Envelope:
    fields: dict[str, object] = {
        "timestamp_ns": 1_700_000_000_123_456_789,
        "namespace": "default",
        "topic": "/tasks/exit",
        "event": any_pb2.Any(type_url="containerd.events.TaskExit", value=b""),
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_forward_delivers_the_envelope_as_built() -> None:
    env = _envelope()

    async def main() -> Envelope:
        ex = Exchange()
        sub = ex.subscribe()
        await ex.forward(env)
        return await sub.__anext__()

    assert run(main()) is env


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp_ns": ZERO_TIME_NS}, "timestamp must be set on forwarded event"),
        ({"namespace": ""}, "event envelope has invalid namespace"),
        ({"namespace": "a b"}, "event envelope has invalid namespace"),
        ({"topic": "tasks"}, "must start with '/'"),
    ],
)
def test_forward_refuses_what_containerd_refuses(change: dict[str, object], message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        run(Exchange().forward(_envelope(**change)))


def test_forward_accepts_an_envelope_without_payload_and_an_epoch_timestamp() -> None:
    # Only Go's zero time means "unset"; 1970 is a real (if odd) time.
    run(Exchange().forward(_envelope(event=None, timestamp_ns=0)))


# --- filters ---------------------------------------------------------------------------------


def _publish_mix(ex: Exchange) -> None:
    async def main() -> None:
        await ex.publish("default", "/images/create", image_pb2.ImageCreate(name="img1"))
        await ex.publish(
            "k8s.io",
            "/images/update",
            image_pb2.ImageUpdate(name="img2", labels={"team": "infra", "a.b": "dotted"}),
        )
        await ex.publish("default", "/tasks/exit", task_pb2.TaskExit(container_id="c1", id="c1"))
        await ex.publish(
            "k8s.io",
            "/tasks/create",
            task_pb2.TaskCreate(
                container_id="c2", io=task_pb2.TaskIO(stdout="/out", terminal=False)
            ),
        )
        await ex.publish(
            "default",
            "/containers/create",
            container_pb2.ContainerCreate(
                id="c3", runtime=container_pb2.ContainerCreate.Runtime(name="io.containerd.runc.v2")
            ),
        )
        await ex.publish("default", "/custom/opaque", any_pb2.Any(type_url="x.Unknown"))

    run(main())


def _topics(filter_strings: list[str]) -> list[str]:
    ex = Exchange()
    sub = ex.subscribe(filter_strings)
    _publish_mix(ex)
    return [e.topic for e in drain(sub)]


ALL_TOPICS = [
    "/images/create",
    "/images/update",
    "/tasks/exit",
    "/tasks/create",
    "/containers/create",
    "/custom/opaque",
]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ([], ALL_TOPICS),
        ([""], ALL_TOPICS),
        (['topic=="/tasks/exit"'], ["/tasks/exit"]),
        (['topic~="^/images/"'], ["/images/create", "/images/update"]),
        (["namespace==k8s.io"], ["/images/update", "/tasks/create"]),
        (
            ["namespace!=k8s.io"],
            ["/images/create", "/tasks/exit", "/containers/create", "/custom/opaque"],
        ),
        (["namespace==k8s.io,topic~=tasks"], ["/tasks/create"]),
        (
            ["namespace==k8s.io", 'topic=="/tasks/exit"'],
            ["/images/update", "/tasks/exit", "/tasks/create"],
        ),
        (["event.container_id==c1"], ["/tasks/exit"]),
        (["event.container_id"], ["/tasks/exit", "/tasks/create"]),
        (["event.name~=img"], ["/images/create", "/images/update"]),
        (["event.labels.team==infra"], ["/images/update"]),
        (['event.labels."a.b"==dotted'], ["/images/update"]),
        (["event.labels.a.b==dotted"], ["/images/update"]),
        (["event.labels.team"], ["/images/update"]),
        (['event.io.stdout=="/out"'], ["/tasks/create"]),
        (["event.io.terminal==false"], ["/tasks/create"]),
        (["event.runtime.name==io.containerd.runc.v2"], ["/containers/create"]),
        # Numbers and timestamps are not addressable, as in containerd.
        (["event.pid"], []),
        (["event.nonexistent"], []),
        (["timestamp"], []),
    ],
)
def test_subscription_filters_select_by_topic_namespace_and_payload(
    flt: list[str], expected: list[str]
) -> None:
    assert _topics(flt) == expected


def test_a_malformed_filter_is_refused_at_subscribe() -> None:
    ex = Exchange()
    with pytest.raises(filters.FilterSyntaxError):
        ex.subscribe(['topic=="unterminated'])
    assert ex.subscribers == 0


def test_a_single_string_is_not_taken_as_a_list_of_filters() -> None:
    with pytest.raises(TypeError):
        Exchange().subscribe("topic==x")


def test_an_undecodable_payload_has_no_fields() -> None:
    ex = Exchange()
    sub = ex.subscribe(["event.name"])
    garbage = any_pb2.Any(type_url="containerd.events.ImageCreate", value=b"\xff\xff\xff")
    run(ex.publish("default", "/images/create", garbage))
    run(ex.publish("default", "/images/create", image_pb2.ImageCreate(name="ok")))
    assert [e.event.value for e in drain(sub) if e.event] == [
        image_pb2.ImageCreate(name="ok").SerializeToString()
    ]


# --- ordering, fan-out, slow subscribers --------------------------------------------------


def test_every_subscriber_sees_events_in_publish_order() -> None:
    async def main() -> tuple[list[str], list[str], list[str]]:
        ex = Exchange()
        subs = [ex.subscribe() for _ in range(2)]
        only_b = ex.subscribe(["namespace==b"])

        async def publisher(ns: str) -> None:
            for i in range(200):
                await ex.publish(ns, "/seq", namespace_pb2.NamespaceCreate(name=f"{ns}{i}"))
                if i % 7 == 0:
                    await asyncio.sleep(0)

        async def collect(sub: Subscription, n: int) -> list[str]:
            out = []
            async for env in sub:
                assert env.event is not None
                out.append(namespace_pb2.NamespaceCreate.FromString(env.event.value).name)
                if len(out) == n:
                    break
            return out

        readers = [asyncio.create_task(collect(s, 400)) for s in subs]
        reader_b = asyncio.create_task(collect(only_b, 200))
        await asyncio.gather(publisher("a"), publisher("b"))
        first, second = await asyncio.gather(*readers)
        return first, second, await reader_b

    first, second, only_b = run(main())
    assert first == second
    assert [n for n in first if n.startswith("a")] == [f"a{i}" for i in range(200)]
    assert only_b == [f"b{i}" for i in range(200)]


def test_a_slow_subscriber_is_disconnected_and_never_blocks_the_publisher() -> None:
    async def main() -> None:
        ex = Exchange(queue_size=5)
        slow = ex.subscribe()
        fast = ex.subscribe()
        received: list[str] = []

        async def read_fast() -> None:
            async for env in fast:
                received.append(env.topic)
                if len(received) == 20:
                    return

        reader = asyncio.create_task(read_fast())
        for i in range(20):
            # Each publish returns without waiting for anyone.
            await asyncio.wait_for(ex.publish("default", f"/e/n{i}", image_pb2.ImageDelete()), 0.5)
            await asyncio.sleep(0)
        await asyncio.wait_for(reader, 5)
        assert received == [f"/e/n{i}" for i in range(20)]
        # The slow one gets what fit in its queue, then learns it fell behind.
        got = []
        with pytest.raises(SubscriberTooSlow, match="fell behind") as info:
            async for env in slow:
                got.append(env.topic)
        assert got == [f"/e/n{i}" for i in range(5)]
        assert info.value.code == 8  # RESOURCE_EXHAUSTED
        assert ex.subscribers == 1

    run(main())


def test_closing_a_subscription_detaches_it() -> None:
    async def main() -> None:
        ex = Exchange()
        async with ex.subscribe() as sub:
            assert ex.subscribers == 1
            await ex.publish("default", "/a", image_pb2.ImageDelete())
        assert ex.subscribers == 0
        # Closed: what was queued is dropped and iteration ends.
        assert [e async for e in sub] == []

    run(main())


def test_closing_wakes_a_waiting_reader() -> None:
    async def main() -> list[Envelope]:
        ex = Exchange()
        sub = ex.subscribe()
        reader = asyncio.create_task(_collect(sub))
        await asyncio.sleep(0.01)
        sub.close()
        return await asyncio.wait_for(reader, 2)

    assert run(main()) == []


async def _collect(sub: Subscription) -> list[Envelope]:
    return [e async for e in sub]


def test_closing_the_exchange_ends_subscriptions_after_what_they_queued() -> None:
    async def main() -> list[str]:
        ex = Exchange()
        sub = ex.subscribe()
        await ex.publish("default", "/last/one", image_pb2.ImageDelete())
        ex.close()
        await ex.publish("default", "/after/close", image_pb2.ImageDelete())
        with pytest.raises(errdefs.Unavailable):
            ex.subscribe()
        return [e.topic for e in await asyncio.wait_for(_collect(sub), 2)]

    assert run(main()) == ["/last/one"]


def test_ending_a_subscription_delivers_its_queue_first() -> None:
    async def main() -> list[str]:
        ex = Exchange()
        sub = ex.subscribe()
        await ex.publish("default", "/queued", image_pb2.ImageDelete())
        sub.end()
        await ex.publish("default", "/not/delivered", image_pb2.ImageDelete())
        return [e.topic for e in await _collect(sub)]

    assert run(main()) == ["/queued"]


# --- the plugin ------------------------------------------------------------------------------


def test_the_exchange_plugin_installs_and_removes_the_publisher() -> None:
    assert isinstance(events.publisher(), events.NullPublisher)
    ex = events_plugin._init(None)  # type: ignore[arg-type]  # init needs nothing from ic
    try:
        assert events.publisher() is ex
    finally:
        events_plugin._close(ex)
    assert isinstance(events.publisher(), events.NullPublisher)
