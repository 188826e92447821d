"""Event encoding at every edge: the daemon's codec, wire envelopes, the SDK and CLI rendering."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime

import pytest
from google.protobuf import any_pb2

from berth import errdefs
from berth.api.events import content_pb2, image_pb2, snapshot_pb2, task_pb2
from berth.api.services.events.v1 import events_pb2 as grpc_pb
from berth.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from berth.cli.events import go_time, json_line, text_line
from berth.client import _core
from berth.client._async import AsyncEvents
from berth.client._sync import Events
from berth.core.events import typeurl
from berth.core.events.exchange import ZERO_TIME_NS, Envelope
from berth.services.events import envelope_from_pb, envelope_to_pb

# --- the daemon's codec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "url"),
    [
        (task_pb2.TaskExit(container_id="c"), "containerd.events.TaskExit"),
        # image.proto's package differs from the other event files' in containerd.
        (image_pb2.ImageCreate(name="x"), "containerd.services.images.v1.ImageCreate"),
        (content_pb2.ContentDelete(digest="sha256:00"), "containerd.events.ContentDelete"),
        (snapshot_pb2.SnapshotCommit(key="k", name="n"), "containerd.events.SnapshotCommit"),
    ],
)
def test_type_urls_are_bare_message_names_and_round_trip(message: object, url: str) -> None:
    wrapped = typeurl.marshal_any(message)
    assert wrapped.type_url == url
    assert typeurl.unmarshal_any(wrapped) == message


def test_unknown_and_prefixed_type_urls_are_not_found() -> None:
    body = task_pb2.TaskExit(container_id="c").SerializeToString()
    for url in ("containerd.events.NoSuch", "type.googleapis.com/containerd.events.TaskExit"):
        with pytest.raises(errdefs.NotFound, match="not found"):
            typeurl.unmarshal_any(any_pb2.Any(type_url=url, value=body))


def test_bytes_that_do_not_decode_are_invalid_argument() -> None:
    bad = any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff\xff\xff")
    with pytest.raises(errdefs.InvalidArgument):
        typeurl.unmarshal_any(bad)


def test_field_adaptor_follows_containerds_generated_field_methods() -> None:
    msg = task_pb2.TaskCreate(
        container_id="c1",
        bundle="",
        pid=9,
        io=task_pb2.TaskIO(stdin="", stdout="/o", terminal=True),
    )
    f = typeurl.field_adaptor(msg).field
    assert f(["container_id"]) == ("c1", True)
    assert f(["bundle"]) == ("", False)  # empty string: absent
    assert f(["pid"]) == ("", False)  # numbers are unhandled
    assert f(["io", "stdout"]) == ("/o", True)
    assert f(["io", "terminal"]) == ("true", True)
    assert f(["io"]) == ("", False)
    assert f(["container_id", "x"]) == ("", False)
    assert f([]) == ("", False)
    assert typeurl.field_adaptor(task_pb2.TaskCreate()).field(["io", "stdout"]) == ("", False)
    exit_ = task_pb2.TaskExit(container_id="c")
    exit_.exited_at.GetCurrentTime()
    assert typeurl.field_adaptor(exit_).field(["exited_at"]) == ("", False)
    labelled = typeurl.field_adaptor(image_pb2.ImageUpdate(name="n", labels={"a.b": ""}))
    assert labelled.field(["labels", "a", "b"]) == ("", True)
    assert labelled.field(["labels", "zz"]) == ("", False)
    assert typeurl.field_adaptor(image_pb2.ImageUpdate()).field(["labels", "a"]) == ("", False)


def test_marshal_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        typeurl.marshal_any("not an event")


# --- wire envelopes ----------------------------------------------------------------------------


def test_grpc_envelopes_round_trip_with_nanoseconds() -> None:
    env = Envelope(
        timestamp_ns=1_700_000_000_123_456_789,
        namespace="default",
        topic="/tasks/exit",
        event=typeurl.marshal_any(task_pb2.TaskExit(container_id="c")),
    )
    wire = envelope_to_pb(env)
    assert wire.timestamp.nanos == 123_456_789
    assert envelope_from_pb(wire) == env


@pytest.mark.parametrize("cls", [grpc_pb.Envelope, ttrpc_pb.Envelope])
def test_an_unset_timestamp_becomes_go_zero_time_and_no_event_becomes_none(cls: type) -> None:
    env = envelope_from_pb(cls(namespace="n", topic="/t"))
    assert env.timestamp_ns == ZERO_TIME_NS
    assert env.event is None
    assert not envelope_to_pb(env).HasField("event")


# --- the SDK's decoding and the CLI's rendering --------------------------------------------------


def _wire(event: object, topic: str = "/tasks/exit") -> grpc_pb.Envelope:
    env = grpc_pb.Envelope(namespace="default", topic=topic)
    env.timestamp.FromNanoseconds(1_700_000_000_500_000_000)
    if event is not None:
        env.event.CopyFrom(typeurl.marshal_any(event))
    return env


def test_sdk_decodes_known_payloads_with_protobuf_field_names() -> None:
    exit_ = task_pb2.TaskExit(container_id="c1", id="c1", pid=42, exit_status=3)
    exit_.exited_at.FromNanoseconds(1_700_000_000_000_000_000)
    ev = _core.event_from_pb(_wire(exit_))
    assert ev.type_url == "containerd.events.TaskExit"
    assert ev.timestamp == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert ev.payload == {
        "container_id": "c1",
        "id": "c1",
        "pid": 42,
        "exit_status": 3,
        "exited_at": "2023-11-14T22:13:20Z",
    }


def test_sdk_keeps_unknown_payloads_raw() -> None:
    wire = grpc_pb.Envelope(
        namespace="default",
        topic="/x",
        event=any_pb2.Any(type_url="example.Unknown", value=b"\x01"),
    )
    ev = _core.event_from_pb(wire)
    assert (ev.payload, ev.type_url, ev.raw) == (None, "example.Unknown", b"\x01")
    assert json.loads(json_line(ev))["event"] == {"@type": "example.Unknown", "value": "AQ=="}


def test_text_lines_look_like_ctr_events() -> None:
    ev = _core.event_from_pb(
        _wire(image_pb2.ImageCreate(name="img", labels={"a": "b"}), "/images/create")
    )
    assert (
        text_line(ev)
        == '2023-11-14 22:13:20.5 +0000 UTC default /images/create {"name":"img","labels":{"a":"b"}}'
    )
    assert text_line(_core.event_from_pb(_wire(None))).endswith("default /tasks/exit ")


def test_json_lines_are_one_object_per_event() -> None:
    ev = _core.event_from_pb(_wire(snapshot_pb2.SnapshotRemove(key="k"), "/snapshot/remove"))
    line = json_line(ev)
    assert "\n" not in line
    assert json.loads(line) == {
        "timestamp": "2023-11-14T22:13:20.500000Z",
        "namespace": "default",
        "topic": "/snapshot/remove",
        "type": "containerd.events.SnapshotRemove",
        "event": {"key": "k"},
    }


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), "2024-05-01 12:00:00 +0000 UTC"),
        (datetime(2024, 5, 1, 12, 0, 0, 120000, tzinfo=UTC), "2024-05-01 12:00:00.12 +0000 UTC"),
        (datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC), "2024-05-01 12:00:00.000001 +0000 UTC"),
    ],
)
def test_go_time_matches_gos_time_string(moment: datetime, text: str) -> None:
    assert go_time(moment) == text


def test_sdk_subscribe_twins_share_a_signature() -> None:
    s = inspect.signature(Events.subscribe)
    a = inspect.signature(AsyncEvents.subscribe)
    assert list(s.parameters.values()) == list(a.parameters.values())


def test_sdk_subscribe_refuses_a_single_string_as_filters() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        _core.events_subscribe("topic==x")
