"""containerd's filter language: parsing filter strings and matching objects.

Every List call in the containerd API (images, containers, content, leases,
snapshots, introspection plugins) and the events Subscribe call carries a list
of filter strings. This module owns the grammar of those strings, the errors a
malformed one produces, and the semantics of matching a parsed filter against
an object. It does not know about any particular object type: services describe
their objects through an :class:`Adaptor`, usually built with
:func:`adapt_mapping`.

Grammar, as accepted by containerd 1.6::

    filter    := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := [A-Za-z0-9_]+ | "double-quoted"
    operator  := "==" | "!=" | "~="
    value     := bare | "double-quoted"            (for == and !=)
               | bare | "..." | /.../ | |...|      (for ~=)

* A selector without an operator tests that the field is *present*.
* ``,`` joins selectors with AND. There is no OR inside one string: a request's
  list of filter strings is OR-ed (:func:`parse_all`). In particular ``|`` is
  not an operator; it is one of the two extra quote characters a ``~=`` regular
  expression may use, exactly as in containerd.
* A bare value runs up to the next ``,``, whitespace or non-printing
  character; it may not start with ``,``, ``.``, ``=``, ``!``, ``~`` or a
  quote character (so ``name==/x`` is an unterminated quote, as in
  containerd).
* Quoted text uses Go string escapes: ``\\a \\b \\f \\n \\r \\t \\v \\\\``,
  an escaped closing quote, ``\\ooo`` (octal byte), ``\\xHH`` (byte),
  ``\\uHHHH`` and ``\\UHHHHHHHH``. A newline may not appear inside quotes.
* Whitespace may precede a field, an operator or a value, but nothing may
  follow a complete selector except ``,`` or the end of the string.

Matching follows containerd: ``==`` needs the field present and equal; ``!=``
and ``~=`` look only at the value the adaptor returns (``""`` when absent), so
``labels.x!=y`` also matches objects without the label. A regular expression
is searched for anywhere in the value (it is not anchored); one that does not
compile never matches, rather than failing the request, as in containerd.

Known differences from containerd, all in edge cases:

* Regular expressions use Python's :mod:`re`, not RE2. Common syntax agrees,
  but RE2-only forms (``[[:alpha:]]``, ``\\pL``, ``\\z``) do not translate,
  Python-only forms (look-around, back-references) are accepted, ``$`` also
  matches before a final newline, and matching is backtracking, not linear.
* Error positions count characters (code points), not UTF-8 bytes.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeAlias, runtime_checkable

from berth.errdefs import InvalidArgument

__all__ = [
    "ALWAYS",
    "Adaptor",
    "AllOf",
    "AnyOf",
    "Filter",
    "FilterSyntaxError",
    "LabelMap",
    "Node",
    "Operator",
    "Selector",
    "adapt_func",
    "adapt_mapping",
    "parse",
    "parse_all",
    "quote",
]


# --------------------------------------------------------------------------
# Adaptors: how a filter sees an object.


@runtime_checkable
class Adaptor(Protocol):
    """Resolves a field path on one object to ``(value, present)``.

    An absent field must return ``("", False)``: ``!=`` and ``~=`` compare the
    returned value even when the field is absent, as containerd does.
    """

    def field(self, path: Sequence[str]) -> tuple[str, bool]: ...


@dataclass(frozen=True, slots=True)
class _FuncAdaptor:
    fn: Callable[[Sequence[str]], tuple[str, bool]]

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        return self.fn(path)


def adapt_func(fn: Callable[[Sequence[str]], tuple[str, bool]]) -> Adaptor:
    """Wrap a plain function of the field path as an :class:`Adaptor`."""
    return _FuncAdaptor(fn)


@dataclass(frozen=True, slots=True)
class LabelMap:
    """A flat ``str -> str`` map (labels, annotations) inside an object.

    The rest of the field path after the map's name is joined with ``.`` to
    form the key, so ``labels.a.b`` and ``labels."a.b"`` both look up the key
    ``"a.b"``; this is how containerd reaches label keys that contain dots.
    A key is present when it exists, even with an empty value.
    """

    items: Mapping[str, str]


# What a field name can map to in :func:`adapt_mapping`:
#   str              a scalar, present when non-empty (containerd's usual rule);
#   (str, bool)      a scalar with explicit presence, e.g. a snapshot's
#                    ``parent``, which containerd reports present even if empty;
#   LabelMap         a flat map addressed by the rest of the path;
#   Adaptor          delegate the rest of the path (an event's payload);
#   Mapping          a nested message (``target.digest``, ``runtime.name``);
#   None             absent.
Node: TypeAlias = "str | tuple[str, bool] | LabelMap | Adaptor | Mapping[str, Node] | None"

_ABSENT: Final = ("", False)


def _resolve(node: Node, path: Sequence[str]) -> tuple[str, bool]:
    if isinstance(node, str):
        # Extra components below a scalar (``name.x``) name nothing.
        return (node, node != "") if not path else _ABSENT
    if isinstance(node, tuple):
        return node if not path else _ABSENT
    if node is None:
        return _ABSENT
    if isinstance(node, LabelMap):
        key = ".".join(path)
        return (node.items[key], True) if key in node.items else _ABSENT
    if isinstance(node, Mapping):
        # A message itself is not a string value, so a bare ``target`` is
        # absent; only its scalar leaves can be present.
        if not path or path[0] not in node:
            return _ABSENT
        return _resolve(node[path[0]], path[1:])
    return node.field(path)


@dataclass(frozen=True, slots=True)
class _TreeAdaptor:
    root: Mapping[str, Node]

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        return _resolve(self.root, path)


def adapt_mapping(fields: Mapping[str, Node], labels: Mapping[str, str] | None = None) -> Adaptor:
    """Build an :class:`Adaptor` from a description of an object's fields.

    ``fields`` maps top-level field names to :data:`Node` values; ``labels``,
    if given, is exposed as the ``labels`` :class:`LabelMap`. For example an
    image::

        adapt_mapping(
            {
                "name": image.name,
                "target": {"digest": image.target.digest,
                           "mediatype": image.target.media_type},
                "annotations": LabelMap(image.target.annotations),
            },
            labels=image.labels,
        )
    """
    if labels is not None:
        fields = {**fields, "labels": LabelMap(labels)}
    return _TreeAdaptor(fields)


# --------------------------------------------------------------------------
# Filters: the parsed form.


class Filter(ABC):
    """A parsed filter; :meth:`match` decides whether an object is selected."""

    __slots__ = ()

    @abstractmethod
    def match(self, adaptor: Adaptor) -> bool:
        """Whether the object ``adaptor`` describes satisfies this filter."""


class _Always(Filter):
    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Final[Filter] = _Always()
"""The filter of an empty filter string or an empty list: matches everything."""


class Operator(enum.Enum):
    """How a selector compares a field. ``PRESENT`` is the bare field path."""

    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


_OPERATORS: Final = {op.value: op for op in Operator if op is not Operator.PRESENT}


def _compile(pattern: str) -> re.Pattern[str] | None:
    # containerd compiles lazily and treats a bad expression as "matches
    # nothing"; compiling here does the work once per request instead of once
    # per object, with the same outcome.
    if any("\ud800" <= ch <= "\udfff" for ch in pattern):
        # Only \x or octal escapes forming invalid UTF-8 produce these; Go's
        # regexp rejects invalid UTF-8, so such an expression matches nothing.
        return None
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError, Warning):
        # RecursionError: deeply nested groups; OverflowError: huge repeat
        # counts; Warning: only when warnings are configured as errors (e.g.
        # "possible nested set" for ``[[``) - input must never escape as
        # anything but a non-matching selector.
        return None


@dataclass(frozen=True, slots=True)
class Selector(Filter):
    """One ``fieldpath[op value]`` term."""

    path: tuple[str, ...]
    operator: Operator
    value: str = ""
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.operator is Operator.MATCHES:
            object.__setattr__(self, "_regex", _compile(self.value))

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor.field(self.path)
        match self.operator:
            case Operator.PRESENT:
                return present
            case Operator.EQUAL:
                return present and value == self.value
            case Operator.NOT_EQUAL:
                return value != self.value
            case Operator.MATCHES:
                return self._regex is not None and self._regex.search(value) is not None
        return False  # pragma: no cover - the match above is exhaustive


@dataclass(frozen=True, slots=True)
class AllOf(Filter):
    """Conjunction: the ``,``-separated selectors of one filter string."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True, slots=True)
class AnyOf(Filter):
    """Disjunction: the filter strings of one request."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


# --------------------------------------------------------------------------
# Parsing.


class FilterSyntaxError(InvalidArgument):
    """A filter string that does not parse; ``position`` is a character offset."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        if position < len(text):
            # containerd's way of pointing at the offending character.
            shown = f"{text[:position]} >|{text[position]}|< {text[position + 1 :]}"
        else:
            shown = text
        super().__init__(f"filters: parse error: [{shown}]: at {position}: {reason}")
        self.text = text
        self.position = position
        self.reason = reason


# Go's unicode.IsSpace, which the containerd scanner uses; Python's isspace()
# differs (it also accepts U+001C..U+001F).
_SPACE: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_FIELD_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_OPERATOR_CHARS: Final = frozenset("=!~")
# '"' is the only quote allowed in field paths and ==/!= values; '/' and '|'
# are also accepted around ~= values so regular expressions can hold '"'.
_QUOTES: Final = frozenset('"/|')
_SEPARATORS: Final = frozenset(",.")
_OCTAL: Final = frozenset("01234567")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES: Final = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
}
_HEX_ESCAPE_DIGITS: Final = {"x": 2, "u": 4, "U": 8}


def _is_value_char(ch: str) -> bool:
    # Go's graphic characters (letters, marks, numbers, punctuation, symbols;
    # space separators are excluded as whitespace) other than ','.
    return ch != "," and unicodedata.category(ch)[0] in "LMNPS"


class _Parser:
    """Recursive-descent parser over one filter string.

    Loops rather than recursion throughout, and every step consumes input or
    raises, so arbitrary input terminates in time linear in its length.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def _error(self, position: int, reason: str) -> FilterSyntaxError:
        return FilterSyntaxError(self._text, position, reason)

    def _look(self) -> str:
        """The character at the cursor, or ``""`` at the end.

        Every character is inspected through here before it is consumed, so
        characters no filter may contain are reported where they occur.
        """
        if self._pos >= len(self._text):
            return ""
        ch = self._text[self._pos]
        if ch == "\0":
            raise self._error(self._pos, "unexpected NUL character")
        if "\ud800" <= ch <= "\udfff":
            # Lone surrogates are what invalid UTF-8 becomes in Python.
            raise self._error(self._pos, "invalid character (lone surrogate)")
        return ch

    def _skip_space(self) -> None:
        while (ch := self._look()) and ch in _SPACE:
            self._pos += 1

    def parse(self) -> Filter:
        selectors = [self._selector()]
        while ch := self._look():
            if ch != ",":
                raise self._error(self._pos, f"unexpected {ch!r}, expected ',' or end of filter")
            self._pos += 1
            selectors.append(self._selector())
        return selectors[0] if len(selectors) == 1 else AllOf(tuple(selectors))

    def _selector(self) -> Selector:
        path = self._fieldpath()
        # No whitespace skipping here: containerd decides "presence" only when
        # the path is directly followed by ',' or the end.
        if self._look() in ("", ","):
            return Selector(path, Operator.PRESENT)
        operator = self._operator()
        return Selector(path, operator, self._value(operator))

    def _fieldpath(self) -> tuple[str, ...]:
        parts = [self._field()]
        while self._look() == ".":
            self._pos += 1
            parts.append(self._field())
        return tuple(parts)

    def _field(self) -> str:
        self._skip_space()
        start = self._pos
        ch = self._look()
        if ch in _QUOTES:
            return self._quoted(alt_quotes=False)
        if ch not in _FIELD_CHARS:
            raise self._error(start, "expected a field name or a double-quoted field")
        while self._look() in _FIELD_CHARS:
            self._pos += 1
        return self._text[start : self._pos]

    def _operator(self) -> Operator:
        self._skip_space()
        start = self._pos
        while self._look() in _OPERATOR_CHARS:
            self._pos += 1
        if start == self._pos:
            raise self._error(start, 'expected an operator ("==", "!=" or "~=")')
        text = self._text[start : self._pos]
        operator = _OPERATORS.get(text)
        if operator is None:
            raise self._error(start, f'unsupported operator {text!r}, expected "==", "!=" or "~="')
        return operator

    def _value(self, operator: Operator) -> str:
        self._skip_space()
        start = self._pos
        ch = self._look()
        if ch in _QUOTES:
            return self._quoted(alt_quotes=operator is Operator.MATCHES)
        if not ch or ch in _SEPARATORS or ch in _OPERATOR_CHARS:
            raise self._error(start, "expected a value or a quoted value")
        # The first character is taken whatever it is (containerd does the
        # same); the rest must be graphic.
        self._pos += 1
        while (ch := self._look()) and _is_value_char(ch):
            self._pos += 1
        return self._text[start : self._pos]

    def _quoted(self, *, alt_quotes: bool) -> str:
        start = self._pos
        quote = self._text[start]
        self._pos += 1
        # Bytes, not characters: \x and octal escapes denote single bytes, as
        # in Go, and several may combine into one UTF-8 character.
        out = bytearray()
        while True:
            ch = self._look()
            if not ch or ch == "\n":
                raise self._error(start, "quoted literal not terminated")
            if ch == quote:
                self._pos += 1
                break
            if ch == "\\":
                out += self._escape(quote, start)
            else:
                out += ch.encode()
                self._pos += 1
        if quote != '"' and not alt_quotes:
            raise self._error(
                start, f"invalid quote {quote!r}: only ~= values may be quoted with / or |"
            )
        # Bytes that are not UTF-8 survive as lone surrogates: they can never
        # equal a real field value, just as in Go.
        return out.decode("utf-8", "surrogateescape")

    def _escape(self, quote: str, literal_start: int) -> bytes:
        backslash = self._pos
        self._pos += 1
        ch = self._look()
        if not ch:
            raise self._error(literal_start, "quoted literal not terminated")
        if ch in _SIMPLE_ESCAPES:
            self._pos += 1
            return _SIMPLE_ESCAPES[ch]
        if ch == quote:
            self._pos += 1
            return ch.encode()
        if ch in _OCTAL:
            digits = self._digits(3, _OCTAL, backslash)
            code = int(digits, 8)
            if code > 0xFF:
                raise self._error(backslash, f"octal escape \\{digits} is greater than \\377")
            return bytes([code])
        if ch in _HEX_ESCAPE_DIGITS:
            self._pos += 1
            digits = self._digits(_HEX_ESCAPE_DIGITS[ch], _HEX, backslash)
            code = int(digits, 16)
            if ch == "x":
                return bytes([code])
            if code > 0x10FFFF:
                raise self._error(backslash, f"escape \\{ch}{digits} is not a Unicode code point")
            if 0xD800 <= code <= 0xDFFF:
                # Go encodes a surrogate code point as U+FFFD.
                code = 0xFFFD
            return chr(code).encode()
        raise self._error(backslash, f"illegal escape sequence \\{ch}")

    def _digits(self, count: int, allowed: frozenset[str], backslash: int) -> str:
        start = self._pos
        for _ in range(count):
            ch = self._look()
            if not ch or ch not in allowed:
                raise self._error(backslash, "illegal numeric escape sequence")
            self._pos += 1
        return self._text[start : self._pos]


def parse(text: str) -> Filter:
    """Parse one filter string; the empty string gives :data:`ALWAYS`.

    Raises :class:`FilterSyntaxError` (an ``InvalidArgument``) for malformed
    input, and nothing else for any ``str``.
    """
    if text == "":
        return ALWAYS
    return _Parser(text).parse()


def parse_all(filters: Sequence[str]) -> Filter:
    """Parse a request's filter list: any one of the strings may match.

    An empty list gives :data:`ALWAYS`, as does any empty string in the list.
    """
    if isinstance(filters, str):
        # A str is a Sequence[str]; iterating it would OR single characters.
        raise TypeError("parse_all takes a sequence of filter strings, not one string")
    parsed = [parse(text) for text in filters]
    if not parsed or any(f is ALWAYS for f in parsed):
        return ALWAYS
    return parsed[0] if len(parsed) == 1 else AnyOf(tuple(parsed))


def quote(text: str) -> str:
    """Quote ``text`` so that it parses back as exactly ``text``.

    Usable for any field-path component or value, e.g.
    ``f"labels.{quote(key)}=={quote(value)}"``. Raises ``ValueError`` for lone
    surrogates, which no filter can carry.
    """
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError(f"cannot quote lone surrogate {ch!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
