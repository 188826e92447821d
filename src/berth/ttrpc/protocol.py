"""ttrpc wire protocol, without I/O: framing, message encoding, and the parser.

This module owns everything about ttrpc that does not touch a socket: the frame
header, the ``ttrpc.Request``/``ttrpc.Response``/``ttrpc.KeyValue`` messages,
and :class:`Connection`, a state machine that turns received bytes into events
and outgoing calls into bytes. ``berth.ttrpc.server`` and ``berth.ttrpc.client``
drive it over asyncio; tests drive it with plain bytes.

Design note
-----------
The behaviour mirrors containerd/ttrpc v1.1 (the version containerd 1.6 and
its shims are built with, and the one Debian ships). That version is unary
only: there are two message types, request (1) and response (2), and the
header's flags byte is reserved and always zero. Streaming and data frames
arrived in ttrpc v1.2 and are not part of this protocol level.

Every frame is a 10-byte header followed by ``length`` payload bytes::

    +----------------+----------------+--------+--------+-------------------+
    | length (u32 BE)| stream id (u32)| type u8| flags u8| payload (length) |
    +----------------+----------------+--------+--------+-------------------+

A request frame carries a protobuf ``ttrpc.Request`` whose ``payload`` is the
serialized method input; the response on the same stream id carries a
``ttrpc.Response`` with a ``google.rpc.Status`` (absent when the call
succeeded, exactly as Go leaves it nil) and the serialized method output.
Clients number their streams 1, 3, 5, ...; a server rejects even ids.

Any 10 bytes form a syntactically valid header, so "garbage" shows up as one
of: a declared length above 4 MiB, a message type we do not know, an even
client stream id, or a payload that is not a valid protobuf message. None of
those poison the connection in Go's implementation, and none do here: they
surface as a non-fatal :class:`ProtocolError` naming the stream, with the
status Go would answer. An oversized frame's payload is skipped byte for byte
(without buffering it) and the stream is answered with RESOURCE_EXHAUSTED, so
the peer can carry on. The only fatal condition is the peer closing the
connection in the middle of a frame.

Protobuf classes are built at import time from a descriptor written in code,
in a private descriptor pool, so this package never clashes with another copy
of ``ttrpc.Request`` that some other library may register in the default pool.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from berth import errdefs

__all__ = [
    "CODE_INTERNAL",
    "CODE_RESOURCE_EXHAUSTED",
    "MESSAGE_HEADER_LENGTH",
    "MESSAGE_LENGTH_MAX",
    "Connection",
    "ConnectionStateError",
    "Event",
    "Frame",
    "KeyValueProto",
    "MessageType",
    "ProtocolError",
    "Request",
    "RequestProto",
    "RequestReceived",
    "Response",
    "ResponseProto",
    "ResponseReceived",
    "Role",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_request",
    "encode_response",
    "normalize_metadata",
]

MESSAGE_HEADER_LENGTH: Final = 10
MESSAGE_LENGTH_MAX: Final = 4 << 20

# Codes errdefs has no name for but ttrpc uses on the wire.
CODE_RESOURCE_EXHAUSTED: Final = 8
CODE_INTERNAL: Final = 13

_HEADER = struct.Struct(">IIBB")
_U32_MASK: Final = 0xFFFFFFFF


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2


class Role(enum.Enum):
    """Which end of the connection a :class:`Connection` plays."""

    CLIENT = "client"
    SERVER = "server"


# --------------------------------------------------------------------------
# Message classes, from a descriptor assembled here rather than a .proto file.


def _build_messages() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    # google.rpc.Status (and google.protobuf.Any under it) must be in our private
    # pool for the Response.status field to resolve; copy their descriptors in.
    for dep in (status_pb2.DESCRIPTOR.dependencies[0], status_pb2.DESCRIPTOR):
        dep_proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(dep_proto)
        pool.Add(dep_proto)

    fdp = descriptor_pb2.FileDescriptorProto(
        name="berth/ttrpc/wire.proto",
        package="ttrpc",
        syntax="proto3",
        dependency=[status_pb2.DESCRIPTOR.name],
    )
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def add(msg: descriptor_pb2.DescriptorProto, name: str, num: int, typ: int, **kw: Any) -> None:
        msg.field.add(name=name, number=num, type=typ, json_name=_camel(name), **kw)

    kv = fdp.message_type.add(name="KeyValue")
    add(kv, "key", 1, f.TYPE_STRING, label=opt)
    add(kv, "value", 2, f.TYPE_STRING, label=opt)

    req = fdp.message_type.add(name="Request")
    add(req, "service", 1, f.TYPE_STRING, label=opt)
    add(req, "method", 2, f.TYPE_STRING, label=opt)
    add(req, "payload", 3, f.TYPE_BYTES, label=opt)
    add(req, "timeout_nano", 4, f.TYPE_INT64, label=opt)
    add(req, "metadata", 5, f.TYPE_MESSAGE, label=rep, type_name=".ttrpc.KeyValue")

    resp = fdp.message_type.add(name="Response")
    add(resp, "status", 1, f.TYPE_MESSAGE, label=opt, type_name=".google.rpc.Status")
    add(resp, "payload", 2, f.TYPE_BYTES, label=opt)

    pool.Add(fdp)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ttrpc.{n}"))
        for n in ("Request", "Response", "KeyValue")
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


# Typed as Any: the classes are made at run time, so static checkers cannot see
# their fields. Everything outside this module uses the dataclasses below.
RequestProto: Any
ResponseProto: Any
KeyValueProto: Any
RequestProto, ResponseProto, KeyValueProto = _build_messages()


# --------------------------------------------------------------------------
# Plain, typed views of the messages.


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded ``ttrpc.Request``.

    ``metadata`` keeps the wire order and duplicates as (key, value) pairs;
    ``timeout_nano`` of 0 means "no deadline", as in Go.
    """

    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: tuple[tuple[str, str], ...] = ()

    def metadata_dict(self) -> dict[str, list[str]]:
        """Metadata grouped by key, values in arrival order (Go's ``MD``)."""
        md: dict[str, list[str]] = {}
        for k, v in self.metadata:
            md.setdefault(k, []).append(v)
        return md


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded ``ttrpc.Response``; ``code`` 0 means success.

    Status details (``google.protobuf.Any`` list) are not carried: nothing in
    containerd 1.6 sends or reads them.
    """

    payload: bytes = b""
    code: int = errdefs.CODE_OK
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == errdefs.CODE_OK


def encode_request(request: Request) -> bytes:
    msg = RequestProto(
        service=request.service,
        method=request.method,
        payload=request.payload,
        timeout_nano=request.timeout_nano,
    )
    for k, v in request.metadata:
        msg.metadata.add(key=k, value=v)
    data: bytes = msg.SerializeToString()
    return data


def decode_request(data: bytes) -> Request:
    """Parse a ``ttrpc.Request``; raises ``DecodeError`` on malformed input."""
    msg = RequestProto()
    msg.ParseFromString(data)
    return Request(
        service=msg.service,
        method=msg.method,
        payload=msg.payload,
        timeout_nano=msg.timeout_nano,
        metadata=tuple((kv.key, kv.value) for kv in msg.metadata),
    )


def encode_response(response: Response) -> bytes:
    msg = ResponseProto(payload=response.payload)
    # Go serialises a nil *Status for success; leaving the field unset keeps
    # the bytes identical to what a Go server sends.
    if response.code != errdefs.CODE_OK:
        msg.status.code = response.code
        msg.status.message = response.message
    data: bytes = msg.SerializeToString()
    return data


def decode_response(data: bytes) -> Response:
    """Parse a ``ttrpc.Response``; raises ``DecodeError`` on malformed input."""
    msg = ResponseProto()
    msg.ParseFromString(data)
    if msg.HasField("status"):
        return Response(payload=msg.payload, code=msg.status.code, message=msg.status.message)
    return Response(payload=msg.payload)


def encode_frame(stream_id: int, message_type: int, payload: bytes, flags: int = 0) -> bytes:
    """One frame: header plus payload. Refuses payloads the peer would reject."""
    if len(payload) > MESSAGE_LENGTH_MAX:
        raise ValueError(
            f"message length {len(payload)} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
        )
    return _HEADER.pack(len(payload), stream_id & _U32_MASK, message_type, flags) + payload


# --------------------------------------------------------------------------
# Events.


@dataclass(frozen=True, slots=True)
class Frame:
    """A raw frame as read off the wire."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


class Event:
    """Base of everything :meth:`Connection.receive_data` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    stream_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    stream_id: int
    response: Response


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    """The peer sent something this end cannot accept.

    ``stream_id`` names the offending stream when the header could be read.
    ``code``/``message`` are the status Go's ttrpc reports for the condition.
    ``reply`` is true when a server should answer ``stream_id`` with that
    status (Go does for oversize, undecodable and even-numbered requests; it
    silently drops unknown message types for forward compatibility). On the
    client side, a non-fatal error with a ``stream_id`` fails that one call.
    ``fatal`` means the connection cannot continue and must be closed.
    """

    message: str
    code: int = errdefs.CODE_UNKNOWN
    stream_id: int | None = None
    reply: bool = False
    fatal: bool = False
    frame_type: int | None = field(default=None, compare=False)


class ConnectionStateError(RuntimeError):
    """The local side used a :class:`Connection` wrongly (e.g. after EOF)."""


# --------------------------------------------------------------------------
# The state machine.


class Connection:
    """Sans-I/O ttrpc endpoint.

    Feed it whatever the socket delivered with :meth:`receive_data` (any
    fragmentation, including one byte at a time) and act on the returned
    events; ask it for the bytes of outgoing messages with :meth:`send_request`
    (client) or :meth:`send_response` (server). It never raises on peer input.
    """

    def __init__(self, role: Role, *, max_message_length: int = MESSAGE_LENGTH_MAX) -> None:
        self.role = role
        self.max_message_length = max_message_length
        self._buf = bytearray()
        # Header of an oversized frame whose payload we are skipping, and how
        # many bytes of it are still to come.
        self._discard_header: tuple[int, int, int] | None = None
        self._discard_remaining = 0
        self._next_stream_id = 1
        self._eof = False

    # -- outgoing -----------------------------------------------------------

    def next_stream_id(self) -> int:
        """Allocate the next odd client stream id (1, 3, 5, ...).

        Wraps at 2**32 like Go's uint32 counter; the result stays odd.
        """
        if self.role is not Role.CLIENT:
            raise ConnectionStateError("only clients allocate stream ids")
        sid = self._next_stream_id
        self._next_stream_id = (sid + 2) & _U32_MASK
        return sid

    def send_request(self, request: Request) -> tuple[int, bytes]:
        """Encode ``request`` on a fresh stream; returns (stream id, bytes).

        Raises ``ValueError`` if the encoded request exceeds the size limit,
        before any stream id is consumed.
        """
        payload = encode_request(request)
        if len(payload) > self.max_message_length:
            raise ValueError(
                f"message length {len(payload)} exceed maximum message size of "
                f"{self.max_message_length}"
            )
        sid = self.next_stream_id()
        return sid, encode_frame(sid, MessageType.REQUEST, payload)

    def send_response(self, stream_id: int, response: Response) -> bytes:
        """Encode ``response`` for ``stream_id``.

        A successful response whose encoding would exceed the size limit is
        replaced by a RESOURCE_EXHAUSTED status, so the caller is told why
        instead of having the frame rejected at the other end.
        """
        if self.role is not Role.SERVER:
            raise ConnectionStateError("only servers send responses")
        payload = encode_response(response)
        if len(payload) > self.max_message_length:
            payload = encode_response(
                Response(
                    code=CODE_RESOURCE_EXHAUSTED,
                    message=(
                        f"message length {len(payload)} exceed maximum message size of "
                        f"{self.max_message_length}"
                    ),
                )
            )
        return encode_frame(stream_id, MessageType.RESPONSE, payload)

    # -- incoming -----------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the peer and return the events they complete."""
        if self._eof:
            raise ConnectionStateError("receive_data after receive_eof")
        events: list[Event] = []
        view = memoryview(data)
        # Skip the rest of an oversized frame without ever buffering it.
        if self._discard_remaining:
            n = min(self._discard_remaining, len(view))
            self._discard_remaining -= n
            view = view[n:]
            if not self._discard_remaining:
                events.append(self._oversize_error())
        if not view:
            return events
        self._buf += view
        self._parse(events)
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its side. Reports a fatal error if mid-frame."""
        if self._eof:
            return []
        self._eof = True
        if self._discard_remaining or self._buf:
            pending = self._discard_remaining or len(self._buf)
            self._buf.clear()
            self._discard_remaining = 0
            return [
                ProtocolError(
                    message=f"connection closed in the middle of a frame ({pending} bytes pending)",
                    code=errdefs.CODE_UNAVAILABLE,
                    fatal=True,
                )
            ]
        return []

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def _parse(self, events: list[Event]) -> None:
        buf = self._buf
        pos = 0
        while len(buf) - pos >= MESSAGE_HEADER_LENGTH:
            length, sid, mtype, flags = _HEADER.unpack_from(buf, pos)
            if length > self.max_message_length:
                pos += MESSAGE_HEADER_LENGTH
                avail = len(buf) - pos
                self._discard_header = (length, sid, mtype)
                if avail >= length:
                    pos += length
                    events.append(self._oversize_error())
                    continue
                # Drop what we have and skip the remainder as it arrives.
                self._discard_remaining = length - avail
                pos = len(buf)
                break
            end = pos + MESSAGE_HEADER_LENGTH + length
            if len(buf) < end:
                break
            payload = bytes(buf[pos + MESSAGE_HEADER_LENGTH : end])
            pos = end
            events.append(self._frame_event(Frame(sid, mtype, flags, payload)))
        if pos:
            del buf[:pos]

    def _oversize_error(self) -> ProtocolError:
        assert self._discard_header is not None
        length, sid, mtype = self._discard_header
        self._discard_header = None
        return ProtocolError(
            message=(
                f"message length {length} exceed maximum message size of {self.max_message_length}"
            ),
            code=CODE_RESOURCE_EXHAUSTED,
            stream_id=sid,
            reply=self.role is Role.SERVER,
            frame_type=mtype,
        )

    def _frame_event(self, frame: Frame) -> Event:
        if self.role is Role.SERVER:
            return self._server_frame(frame)
        return self._client_frame(frame)

    def _server_frame(self, frame: Frame) -> Event:
        sid = frame.stream_id
        if frame.type != MessageType.REQUEST:
            # Go's server ignores other types so newer peers can add some.
            return ProtocolError(
                message=f"unexpected message type {frame.type} from client",
                code=errdefs.CODE_INVALID_ARGUMENT,
                stream_id=sid,
                frame_type=frame.type,
            )
        # Go decodes before checking the id; keep that order so the same input
        # produces the same status.
        try:
            request = decode_request(frame.payload)
        except (DecodeError, ValueError) as exc:
            return ProtocolError(
                message=f"unmarshal request error: {exc}",
                code=errdefs.CODE_INVALID_ARGUMENT,
                stream_id=sid,
                reply=True,
                frame_type=frame.type,
            )
        if sid % 2 != 1:
            return ProtocolError(
                message="StreamID must be odd for client initiated streams",
                code=errdefs.CODE_INVALID_ARGUMENT,
                stream_id=sid,
                reply=True,
                frame_type=frame.type,
            )
        return RequestReceived(sid, request)

    def _client_frame(self, frame: Frame) -> Event:
        sid = frame.stream_id
        if frame.type != MessageType.RESPONSE:
            return ProtocolError(
                message="unknown message type received",
                stream_id=sid,
                frame_type=frame.type,
            )
        try:
            response = decode_response(frame.payload)
        except (DecodeError, ValueError) as exc:
            return ProtocolError(
                message=f"failed to decode response: {exc}",
                stream_id=sid,
                frame_type=frame.type,
            )
        return ResponseReceived(sid, response)


def normalize_metadata(
    metadata: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    """Flatten user metadata into wire pairs, lower-casing keys like Go's ``MD.Set``."""
    if metadata is None:
        return ()
    items: Iterable[tuple[str, str | Sequence[str]]]
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    out: list[tuple[str, str]] = []
    for key, values in items:
        k = key.lower()
        if isinstance(values, str):
            out.append((k, values))
        else:
            out.extend((k, v) for v in values)
    return tuple(out)
