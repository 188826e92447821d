"""The one error vocabulary of Berth, and its mapping to gRPC status codes.

Domain code raises these; the gRPC adapters in ``berth.services`` turn them into
status codes exactly as containerd's ``errdefs`` package does, and the SDK turns
codes back into these classes. Nothing here imports gRPC: codes are carried as
the canonical integers of ``google.rpc.Code``.

    BerthError                     -> UNKNOWN (2)
    ├── InvalidArgument            -> INVALID_ARGUMENT (3)
    ├── NotFound                   -> NOT_FOUND (5)
    ├── AlreadyExists              -> ALREADY_EXISTS (6)
    ├── FailedPrecondition         -> FAILED_PRECONDITION (9)
    ├── Unavailable                -> UNAVAILABLE (14)
    ├── NotImplemented             -> UNIMPLEMENTED (12)
    ├── OutOfRange                 -> OUT_OF_RANGE (11)
    ├── Canceled                   -> CANCELLED (1)
    └── DeadlineExceeded           -> DEADLINE_EXCEEDED (4)
"""

from __future__ import annotations

# google.rpc.Code values; stable across gRPC implementations.
CODE_OK = 0
CODE_CANCELLED = 1
CODE_UNKNOWN = 2
CODE_INVALID_ARGUMENT = 3
CODE_DEADLINE_EXCEEDED = 4
CODE_NOT_FOUND = 5
CODE_ALREADY_EXISTS = 6
CODE_FAILED_PRECONDITION = 9
CODE_OUT_OF_RANGE = 11
CODE_UNIMPLEMENTED = 12
CODE_UNAVAILABLE = 14


class BerthError(Exception):
    """Base of every error Berth reports to a client."""

    code: int = CODE_UNKNOWN

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BerthError):
    code = CODE_INVALID_ARGUMENT


class NotFound(BerthError):
    code = CODE_NOT_FOUND


class AlreadyExists(BerthError):
    code = CODE_ALREADY_EXISTS


class FailedPrecondition(BerthError):
    code = CODE_FAILED_PRECONDITION


class Unavailable(BerthError):
    code = CODE_UNAVAILABLE


class NotImplemented(BerthError):
    code = CODE_UNIMPLEMENTED


class OutOfRange(BerthError):
    """An offset outside an object (content reads and writes), as containerd reports it."""

    code = CODE_OUT_OF_RANGE


class Canceled(BerthError):
    code = CODE_CANCELLED


class DeadlineExceeded(BerthError):
    code = CODE_DEADLINE_EXCEEDED


_BY_CODE: dict[int, type[BerthError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        NotImplemented,
        OutOfRange,
        Canceled,
        DeadlineExceeded,
    )
}


def from_code(code: int, message: str) -> BerthError:
    """Rebuild the domain error for a status code received from a peer."""
    return _BY_CODE.get(code, BerthError)(message)


def code_of(exc: BaseException) -> int:
    """The status code containerd would return for ``exc``."""
    if isinstance(exc, BerthError):
        return exc.code
    return CODE_UNKNOWN


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(text: str) -> str:
    """``text`` double-quoted the way Go's ``%q`` writes it.

    Messages name keys as containerd's do (``snapshot "k": already exists``),
    so that clients matching on containerd's text, and people reading both,
    see the same thing. Printable characters stay as they are;
    the rest become Go's escapes (``\\n``, ``\\x01``, ``\\u200b``).
    """
    out = ['"']
    for ch in text:
        escaped = _GO_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)
