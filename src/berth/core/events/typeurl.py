"""The event codec: protobuf ``Any`` wrapping, type URLs, and filter field paths.

This module is the only place in ``berth.core.events`` that looks inside an
event. It owns three rules that must match containerd exactly, because Go
clients (``ctr events``, kubelet via CRI) decode what Berth sends:

Type URLs
    containerd's ``typeurl`` package names a protobuf message by its bare full
    name (``containerd.events.TaskExit``), not by the
    ``type.googleapis.com/...`` form protobuf's own ``Any.Pack`` writes: the
    event types are never ``typeurl.Register``-ed, so ``typeurl.TypeURL`` falls
    back to ``proto.MessageName``. Decoding is the mirror image: the URL is
    looked up as a message name, and a URL with a prefix is unknown, as it is
    to ``typeurl.UnmarshalAny``.

Which types are known
    Importing this module imports every ``containerd.events`` message module,
    as ``ctr`` does with its blank import of ``api/events``, so an envelope
    carrying any containerd event can be decoded for filtering.

Field paths
    A subscription filter such as ``event.container_id==abc`` reaches into the
    decoded payload through the ``Field`` methods containerd generates for its
    event messages. :func:`field_adaptor` applies the same rules generically
    from the message descriptor: string fields are present when non-empty;
    bools are always present and read ``true``/``false``; maps (``labels``)
    are addressed by the rest of the path joined with ``.`` and absent when
    empty; nested messages recurse and are absent when unset; numbers,
    timestamps, repeated fields and ``Any`` are not addressable (containerd's
    generator leaves them "unhandled").

Events *are* protobuf messages, so depending on ``google.protobuf`` here is
the honest dependency; nothing here touches gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

# Imported for their side effect: registering containerd's event types in the
# default descriptor pool, so that their type URLs resolve.
from berth.api.events import (  # noqa: F401
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from berth.errdefs import InvalidArgument, NotFound
from berth.filters import Adaptor

__all__ = ["field_adaptor", "marshal_any", "type_url", "unmarshal_any"]

_ABSENT = ("", False)


def type_url(message: Message) -> str:
    """The type URL containerd writes for ``message``: its bare full name."""
    return str(message.DESCRIPTOR.full_name)


def marshal_any(event: object) -> any_pb2.Any:
    """Wrap ``event`` in an ``Any`` with containerd's type URL.

    An ``Any`` is passed through unchanged (containerd does the same, so a
    client's ``Publish`` keeps its own type URL). Raises ``TypeError`` for
    anything that is not a protobuf message: events are always messages, so
    that is a programming error, not bad input.
    """
    if isinstance(event, any_pb2.Any):
        return event
    if not isinstance(event, Message):
        raise TypeError(f"an event must be a protobuf message, not {type(event).__name__}")
    return any_pb2.Any(type_url=type_url(event), value=event.SerializeToString())


def _message_class(url: str) -> type[Message]:
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(url)
    except KeyError:
        raise NotFound(f"type with url {url}: not found") from None
    return GetMessageClass(desc)


def unmarshal_any(value: any_pb2.Any) -> Message:
    """Decode an ``Any`` by its type URL.

    Raises NotFound for a type URL no loaded message type has (containerd's
    ``typeurl`` says the same), and InvalidArgument when the bytes do not
    decode as that type.
    """
    cls = _message_class(value.type_url)
    msg = cls()
    try:
        msg.ParseFromString(value.value)
    except DecodeError as exc:
        raise InvalidArgument(f"cannot decode {value.type_url}: {exc}") from None
    return msg


def _resolve(msg: Message, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return _ABSENT
    field = msg.DESCRIPTOR.fields_by_name.get(path[0])
    if field is None:
        return _ABSENT
    rest = path[1:]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry_fields = field.message_type.fields_by_name
        if entry_fields["value"].type != FieldDescriptor.TYPE_STRING:
            return _ABSENT
        items = getattr(msg, field.name)
        if not items:
            return _ABSENT
        key = ".".join(rest)
        return (items[key], True) if key in items else _ABSENT
    if _is_repeated(field):
        return _ABSENT
    if field.type == FieldDescriptor.TYPE_STRING:
        text = getattr(msg, field.name)
        return (text, text != "") if not rest else _ABSENT
    if field.type == FieldDescriptor.TYPE_BOOL:
        # Go formats a bool with fmt.Sprint and always reports it present.
        return ("true" if getattr(msg, field.name) else "false", True) if not rest else _ABSENT
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        if field.message_type.full_name.startswith("google.protobuf."):
            return _ABSENT  # Any, Timestamp: not addressable, as in containerd
        if not msg.HasField(field.name):
            return _ABSENT
        return _resolve(getattr(msg, field.name), rest)
    return _ABSENT


def _is_repeated(field: object) -> bool:
    # Newer protobuf releases have ``is_repeated`` and dropped ``label``;
    # older ones (still allowed by the project's requirement) only have ``label``.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(getattr(field, "label", 0) == FieldDescriptor.LABEL_REPEATED)


class _MessageAdaptor:
    __slots__ = ("_msg",)

    def __init__(self, msg: Message) -> None:
        self._msg = msg

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        return _resolve(self._msg, path)


def field_adaptor(message: Message) -> Adaptor:
    """A filter adaptor over ``message``'s fields, with containerd's rules."""
    return _MessageAdaptor(message)
