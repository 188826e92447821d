"""Sans-I/O tests of berth.ttrpc.protocol: framing, encoding, parser robustness."""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth import errdefs
from berth.ttrpc import protocol as p
from berth.ttrpc.protocol import (
    CODE_RESOURCE_EXHAUSTED,
    MESSAGE_LENGTH_MAX,
    Connection,
    ConnectionStateError,
    Event,
    MessageType,
    ProtocolError,
    Request,
    RequestReceived,
    Response,
    ResponseReceived,
    Role,
)


def header(length: int, sid: int, mtype: int, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", length, sid, mtype, flags)


def request_frame(sid: int, request: Request) -> bytes:
    return p.encode_frame(sid, MessageType.REQUEST, p.encode_request(request))


def feed_bytewise(conn: Connection, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        events.extend(conn.receive_data(data[i : i + 1]))
    return events


# -- wire format ---------------------------------------------------------------


def test_frame_header_layout() -> None:
    frame = p.encode_frame(0x01020304, MessageType.RESPONSE, b"abc")
    assert frame == b"\x00\x00\x00\x03" + b"\x01\x02\x03\x04" + b"\x02" + b"\x00" + b"abc"
    assert len(frame) == p.MESSAGE_HEADER_LENGTH + 3


def test_request_field_numbers_match_ttrpc() -> None:
    # Hand-assembled protobuf: service=1, method=2, payload=3, timeout_nano=4
    # (varint), metadata=5 (KeyValue{key=1, value=2}).
    req = Request("svc", "M", b"\x01", 7, (("k", "v"),))
    expected = (
        b"\x0a\x03svc"
        + b"\x12\x01M"
        + b"\x1a\x01\x01"
        + b"\x20\x07"
        + b"\x2a\x06"
        + b"\x0a\x01k\x12\x01v"
    )
    assert p.encode_request(req) == expected
    assert p.decode_request(expected) == req


def test_response_field_numbers_and_nil_status_on_success() -> None:
    # Success: Go leaves Status nil, so only the payload field (2) is present.
    assert p.encode_response(Response(payload=b"hi")) == b"\x12\x02hi"
    # Error: Status{code=1, message=2} in field 1, no payload.
    err = p.encode_response(Response(code=5, message="nope"))
    assert err == b"\x0a\x08" + b"\x08\x05" + b"\x12\x04nope"
    assert p.decode_response(err) == Response(code=5, message="nope")


def test_response_with_explicit_ok_status_decodes_as_success() -> None:
    msg = p.ResponseProto(payload=b"x")
    msg.status.code = 0  # present but OK, as some peers send it
    msg.status.SetInParent()
    decoded = p.decode_response(msg.SerializeToString())
    assert decoded.ok and decoded.payload == b"x"


def test_negative_timeout_roundtrips_as_int64() -> None:
    req = Request("s", "m", timeout_nano=-1)
    assert p.decode_request(p.encode_request(req)).timeout_nano == -1


def test_message_classes_use_package_ttrpc() -> None:
    assert p.RequestProto.DESCRIPTOR.full_name == "ttrpc.Request"
    assert p.ResponseProto.DESCRIPTOR.fields_by_name["status"].message_type.full_name == (
        "google.rpc.Status"
    )
    assert p.KeyValueProto.DESCRIPTOR.full_name == "ttrpc.KeyValue"


# -- round trips through the state machine ---------------------------------------


def test_request_response_roundtrip() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    req = Request("containerd.task.v2.Task", "State", b"payload", 10**9, (("a", "1"), ("a", "2")))
    sid, data = client.send_request(req)
    assert sid == 1
    assert server.receive_data(data) == [RequestReceived(1, req)]
    assert req.metadata_dict() == {"a": ["1", "2"]}

    out = server.send_response(sid, Response(payload=b"answer"))
    assert client.receive_data(out) == [ResponseReceived(1, Response(payload=b"answer"))]


def test_client_stream_ids_are_odd_and_increase_and_wrap() -> None:
    client = Connection(Role.CLIENT)
    assert [client.next_stream_id() for _ in range(4)] == [1, 3, 5, 7]
    client._next_stream_id = 0xFFFFFFFF
    assert client.next_stream_id() == 0xFFFFFFFF
    assert client.next_stream_id() == 1


def test_role_misuse_is_a_local_error() -> None:
    with pytest.raises(ConnectionStateError):
        Connection(Role.SERVER).next_stream_id()
    with pytest.raises(ConnectionStateError):
        Connection(Role.CLIENT).send_response(1, Response())


def test_byte_at_a_time_feeding_matches_bulk() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    reqs = [Request("s", f"m{i}", bytes(range(i * 10 % 256)) * 3) for i in range(5)]
    data = b"".join(client.send_request(r)[1] for r in reqs)
    events = feed_bytewise(server, data)
    assert events == [RequestReceived(2 * i + 1, r) for i, r in enumerate(reqs)]
    assert server.buffered == 0


def test_interleaved_streams_in_one_chunk() -> None:
    # Responses for several streams arrive out of order and glued together,
    # with the last one split across two reads.
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    frames = [server.send_response(sid, Response(payload=str(sid).encode())) for sid in (5, 1, 3)]
    blob = b"".join(frames)
    first = client.receive_data(blob[:-3])
    second = client.receive_data(blob[-3:])
    got = [(e.stream_id, e.response.payload) for e in first + second]  # type: ignore[attr-defined]
    assert got == [(5, b"5"), (1, b"1"), (3, b"3")]
    assert len(first) == 2 and len(second) == 1


def test_flags_byte_is_ignored() -> None:
    server = Connection(Role.SERVER)
    body = p.encode_request(Request("s", "m"))
    events = server.receive_data(header(len(body), 1, MessageType.REQUEST, flags=0xFF) + body)
    assert events == [RequestReceived(1, Request("s", "m"))]


def test_zero_length_request_is_an_empty_request() -> None:
    # An empty protobuf is a valid Request with all fields at their defaults;
    # the server will answer UNIMPLEMENTED for service "".
    server = Connection(Role.SERVER)
    assert server.receive_data(header(0, 9, MessageType.REQUEST)) == [
        RequestReceived(9, Request("", ""))
    ]


# -- oversized frames -----------------------------------------------------------


def test_oversize_frame_is_discarded_and_reported_then_stream_continues() -> None:
    server = Connection(Role.SERVER)
    length = MESSAGE_LENGTH_MAX + 1
    events = server.receive_data(header(length, 7, MessageType.REQUEST))
    assert events == []  # the error is reported once the payload is skipped
    chunk = b"\xaa" * 65536
    sent = 0
    while sent + len(chunk) < length:
        assert server.receive_data(chunk) == []
        assert server.buffered == 0  # skipped, never buffered
        sent += len(chunk)
    tail = b"\xaa" * (length - sent)
    follow = request_frame(9, Request("s", "m"))
    events = server.receive_data(tail + follow)
    assert len(events) == 2
    err, ok = events
    assert isinstance(err, ProtocolError)
    assert err.stream_id == 7
    assert err.code == CODE_RESOURCE_EXHAUSTED
    assert err.reply and not err.fatal
    assert err.message == (
        f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
    )
    assert ok == RequestReceived(9, Request("s", "m"))


def test_oversize_frame_fully_buffered_in_one_read() -> None:
    server = Connection(Role.SERVER, max_message_length=16)
    data = header(17, 3, MessageType.REQUEST) + b"x" * 17 + request_frame(5, Request("a", "b"))
    events = server.receive_data(data)
    assert [type(e) for e in events] == [ProtocolError, RequestReceived]
    assert events[0].stream_id == 3  # type: ignore[attr-defined]


def test_oversize_response_fails_only_that_call_on_client() -> None:
    client = Connection(Role.CLIENT, max_message_length=8)
    events = client.receive_data(header(9, 1, MessageType.RESPONSE) + b"z" * 9)
    assert len(events) == 1
    err = events[0]
    assert isinstance(err, ProtocolError)
    assert err.stream_id == 1 and err.code == CODE_RESOURCE_EXHAUSTED
    assert not err.reply and not err.fatal


def test_oversize_request_refused_before_sending() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(ValueError, match="exceed maximum message size"):
        client.send_request(Request("s", "m", b"\0" * MESSAGE_LENGTH_MAX))
    assert client.next_stream_id() == 1  # nothing was consumed


def test_oversize_response_replaced_by_resource_exhausted() -> None:
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    data = server.send_response(1, Response(payload=b"\0" * MESSAGE_LENGTH_MAX))
    assert len(data) < 1024
    [event] = client.receive_data(data)
    assert isinstance(event, ResponseReceived)
    assert event.response.code == CODE_RESOURCE_EXHAUSTED
    assert "exceed maximum message size" in event.response.message


def test_encode_frame_refuses_oversize() -> None:
    with pytest.raises(ValueError):
        p.encode_frame(1, MessageType.REQUEST, b"\0" * (MESSAGE_LENGTH_MAX + 1))


# -- garbage --------------------------------------------------------------------


def test_undecodable_request_is_answered_invalid_argument() -> None:
    server = Connection(Role.SERVER)
    garbage = b"\xff\xff\xff\xff"
    [event] = server.receive_data(header(len(garbage), 1, MessageType.REQUEST) + garbage)
    assert isinstance(event, ProtocolError)
    assert event.code == errdefs.CODE_INVALID_ARGUMENT
    assert event.message.startswith("unmarshal request error:")
    assert event.stream_id == 1 and event.reply and not event.fatal
    # The connection is still usable.
    assert server.receive_data(request_frame(3, Request("s", "m"))) == [
        RequestReceived(3, Request("s", "m"))
    ]


def test_even_stream_id_is_rejected() -> None:
    server = Connection(Role.SERVER)
    [event] = server.receive_data(request_frame(2, Request("s", "m")))
    assert isinstance(event, ProtocolError)
    assert event.message == "StreamID must be odd for client initiated streams"
    assert event.code == errdefs.CODE_INVALID_ARGUMENT
    assert event.stream_id == 2 and event.reply


def test_unknown_message_type_on_server_is_not_answered() -> None:
    # Go's server drops unknown types for forward compatibility.
    server = Connection(Role.SERVER)
    [event] = server.receive_data(header(3, 1, 3) + b"abc")
    assert isinstance(event, ProtocolError)
    assert event.frame_type == 3
    assert not event.reply and not event.fatal


def test_unknown_message_type_on_client_fails_that_stream() -> None:
    client = Connection(Role.CLIENT)
    [event] = client.receive_data(header(0, 5, MessageType.REQUEST))
    assert isinstance(event, ProtocolError)
    assert event.message == "unknown message type received"
    assert event.stream_id == 5 and not event.fatal


def test_undecodable_response_fails_that_stream() -> None:
    client = Connection(Role.CLIENT)
    [event] = client.receive_data(header(2, 1, MessageType.RESPONSE) + b"\x0a\x05")
    assert isinstance(event, ProtocolError)
    assert event.stream_id == 1 and event.code == errdefs.CODE_UNKNOWN


# -- end of stream --------------------------------------------------------------


def test_clean_eof_has_no_events() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(request_frame(1, Request("s", "m")))
    assert server.receive_eof() == []
    assert server.receive_eof() == []  # idempotent


def test_eof_mid_frame_is_fatal() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(request_frame(1, Request("s", "m"))[:-1])
    [event] = server.receive_eof()
    assert isinstance(event, ProtocolError) and event.fatal


def test_eof_while_discarding_is_fatal() -> None:
    server = Connection(Role.SERVER, max_message_length=4)
    assert server.receive_data(header(100, 1, MessageType.REQUEST) + b"x" * 10) == []
    [event] = server.receive_eof()
    assert isinstance(event, ProtocolError) and event.fatal


def test_receive_after_eof_is_a_local_error() -> None:
    server = Connection(Role.SERVER)
    server.receive_eof()
    with pytest.raises(ConnectionStateError):
        server.receive_data(b"x")


def test_normalize_metadata_forms() -> None:
    assert p.normalize_metadata(None) == ()
    assert p.normalize_metadata({"Key": "v", "multi": ["a", "b"]}) == (
        ("key", "v"),
        ("multi", "a"),
        ("multi", "b"),
    )
    assert p.normalize_metadata([("X", "1"), ("x", "2")]) == (("x", "1"), ("x", "2"))


# -- properties -----------------------------------------------------------------

_SMALL_MAX = 64  # keeps the oversize path reachable with short random input


@settings(max_examples=400, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200), max_size=20),
    role=st.sampled_from(list(Role)),
    max_len=st.sampled_from([_SMALL_MAX, MESSAGE_LENGTH_MAX]),
)
def test_arbitrary_bytes_only_yield_events(chunks: list[bytes], role: Role, max_len: int) -> None:
    conn = Connection(role, max_message_length=max_len)
    for chunk in chunks:
        events = conn.receive_data(chunk)
        assert all(
            isinstance(e, RequestReceived | ResponseReceived | ProtocolError) for e in events
        )
        # Whatever arrived, the parser never holds more than one frame's worth.
        assert conn.buffered < p.MESSAGE_HEADER_LENGTH + max_len + max(len(c) for c in chunks)
    for e in conn.receive_eof():
        assert isinstance(e, ProtocolError) and e.fatal


_text = st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    reqs=st.lists(
        st.builds(
            Request,
            service=_text,
            method=_text,
            payload=st.binary(max_size=300),
            timeout_nano=st.integers(-(2**63), 2**63 - 1),
            metadata=st.lists(st.tuples(_text, _text), max_size=4).map(tuple),
        ),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
)
def test_requests_survive_any_fragmentation(reqs: list[Request], cuts: list[int]) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    data = b"".join(client.send_request(r)[1] for r in reqs)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    events: list[Event] = []
    for a, b in itertools.pairwise(bounds):
        events.extend(server.receive_data(data[a:b]))
    assert events == [RequestReceived(2 * i + 1, r) for i, r in enumerate(reqs)]
    assert server.buffered == 0


def test_package_import_stays_light() -> None:
    # The shim imports berth.ttrpc on every start: no gRPC, and none of the
    # generated API modules, may come along.
    code = (
        "import sys, berth.ttrpc\n"
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'berth.api'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
