"""Unit tests for berth.filters: containerd's filter grammar and matching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth import errdefs
from berth.filters import (
    ALWAYS,
    Adaptor,
    AllOf,
    AnyOf,
    Filter,
    FilterSyntaxError,
    LabelMap,
    Operator,
    Selector,
    adapt_func,
    adapt_mapping,
    parse,
    parse_all,
    quote,
)


@dataclass(frozen=True)
class Obj:
    name: str
    other: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


def adapt(obj: Obj) -> Adaptor:
    return adapt_mapping({"name": obj.name, "other": obj.other}, labels=obj.labels)


CORPUS: list[Obj] = [
    Obj("foo", labels={"foo": "true"}),
    Obj("bar"),
    Obj("foo", labels={"foo": "present", "more complex label": "present"}),
    Obj("bar", labels={"bar": "true"}),
    Obj("fooer", labels={'label with \\ and "': "present"}),
    Obj("fooer", labels={'label with \\ and ".post': "present"}),
    Obj("baz", other="too complex, yo"),
    Obj("bazo", other="abc"),
    Obj("compound", labels={"foo": "omg_asdf.asdf-qwer", "io.example/app": "web"}),
]


def select(filters: str | Sequence[str]) -> list[int]:
    """Indexes of CORPUS entries the filter(s) select."""
    f = parse(filters) if isinstance(filters, str) else parse_all(filters)
    return [i for i, obj in enumerate(CORPUS) if f.match(adapt(obj))]


ALL = list(range(len(CORPUS)))


# --------------------------------------------------------------------------
# Semantics over a corpus


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ALL),
        ("name", ALL),
        ("other", [6, 7]),
        ("labels.foo", [0, 2, 8]),
        ("labels.foo,name", [0, 2, 8]),
        ("labels.foo==true", [0]),
        ("labels.foo==omg_asdf.asdf-qwer", [8]),
        ("name==bar", [1, 3]),
        ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
        ("name==bar,labels.bar", [3]),
        ("name==bar,labels.bar==true", [3]),
        ("name==bar,labels.bar==wrong", []),
        ('other=="too complex, yo"', [6]),
        ("other~=[abc]+,name!=foo", [6, 7]),
        ("other~=/[abc]+/,name!=foo", [6, 7]),
        ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
        ("other~=|[abc]{1,2}|", [6, 7]),
        ('other~=/[abc]{0,1}"\\//', []),
        ('name==foo,labels."more complex label"', [2]),
        ('labels."label with \\\\ and \\""==present', [4]),
        ('labels."label with \\\\ and \\"".post==present', [5]),
        ('labels."io.example/app"==web', [8]),
        ("name~=^foo", [0, 2, 4, 5]),
        ("name~=^foo$", [0, 2]),
        ("name~=o", [0, 2, 4, 5, 7, 8]),
        ("name~=(?i)^BA", [1, 3, 6, 7]),
    ],
)
def test_corpus(text: str, expected: list[int]) -> None:
    assert select(text) == expected


def test_label_key_with_dots_bare_or_quoted() -> None:
    # The rest of the path is joined with "." so both spellings reach the key.
    obj = adapt(Obj("x", labels={"a.b.c": "1", "a": "2"}))
    assert parse("labels.a.b.c==1").match(obj)
    assert parse('labels."a.b.c"==1').match(obj)
    assert parse('labels.a."b.c"==1').match(obj)
    assert parse("labels.a==2").match(obj)
    assert not parse("labels.a.b").match(obj)


def test_not_equal_matches_absent_field() -> None:
    # containerd compares the value only, and an absent field reads as "".
    obj = adapt(Obj("x"))
    assert parse("labels.missing!=y").match(obj)
    assert not parse('labels.missing!=""').match(obj)
    assert not parse("labels.missing==y").match(obj)


def test_equal_empty_value_needs_presence() -> None:
    present_empty = adapt(Obj("x", labels={"k": ""}))
    absent = adapt(Obj("x"))
    assert parse('labels.k==""').match(present_empty)
    assert not parse('labels.k==""').match(absent)
    assert parse("labels.k").match(present_empty)


def test_regex_semantics() -> None:
    obj = adapt(Obj("docker.io/library/busybox:latest"))
    # Unanchored search, like Go's MatchString.
    assert parse("name~=busybox").match(obj)
    assert parse("name~=^docker\\.io/").match(obj)
    assert not parse("name~=^busybox").match(obj)
    # Regex over an absent field sees "", as in containerd.
    assert parse("labels.nope~=^$").match(obj)
    assert parse('labels.nope~=""').match(obj)


@pytest.mark.parametrize("pattern", ["[", "(?P<", "a**", "(" * 5000, "a{99999999999999}"])
def test_invalid_regex_parses_but_never_matches(pattern: str) -> None:
    f = parse(f"name~={quote(pattern)}")
    assert isinstance(f, Selector)
    assert f.value == pattern
    assert not f.match(adapt(Obj(pattern)))
    assert not f.match(adapt(Obj("")))


def test_regex_from_invalid_utf8_never_matches() -> None:
    # "\xff" is a lone byte; Go's regexp rejects the pattern, so no match.
    f = parse('name~="\\xff|a"')
    assert not f.match(adapt(Obj("a")))


# --------------------------------------------------------------------------
# Boolean structure


def test_comma_is_and() -> None:
    f = parse("name==foo,labels.foo==true")
    assert isinstance(f, AllOf)
    assert [type(s) for s in f.filters] == [Selector, Selector]


def test_list_of_filters_is_or() -> None:
    assert select(["name==bar", "labels.foo==true"]) == [0, 1, 3]
    # AND binds within each string; the strings are OR-ed.
    assert select(["name==foo,labels.foo==true", "name==bazo"]) == [0, 7]
    assert select(["name==nothing", "name==none"]) == []


def test_pipe_is_not_an_or_operator() -> None:
    # containerd 1.6 has no in-string OR: a bare value may contain "|".
    f = parse("name==bar|foo")
    assert f == Selector(("name",), Operator.EQUAL, "bar|foo")
    assert select("name==bar|foo") == []
    # A regex alternation is of course fine.
    assert select("name~=^(bar|bazo)$") == [1, 3, 7]


def test_empty_inputs_match_everything() -> None:
    assert parse("") is ALWAYS
    assert parse_all([]) is ALWAYS
    assert parse_all([""]) is ALWAYS
    assert parse_all(["name==nothing", ""]) is ALWAYS
    assert ALWAYS.match(adapt_func(lambda path: ("", False)))


def test_parse_all_shapes() -> None:
    single = parse_all(["name==x"])
    assert single == Selector(("name",), Operator.EQUAL, "x")
    many = parse_all(["name==x", "name==y"])
    assert isinstance(many, AnyOf)
    assert len(many.filters) == 2


def test_parse_all_rejects_bare_string() -> None:
    with pytest.raises(TypeError):
        parse_all("name==x")


def test_parse_all_reports_bad_member() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_all(["name==x", "name=="])
    assert info.value.text == "name=="
    assert info.value.position == 6


# --------------------------------------------------------------------------
# Lexical details


@pytest.mark.parametrize(
    ("text", "path", "operator", "value"),
    [
        ("name", ("name",), Operator.PRESENT, ""),
        ("a_B9", ("a_B9",), Operator.PRESENT, ""),
        ("9lives", ("9lives",), Operator.PRESENT, ""),
        ("target.digest", ("target", "digest"), Operator.PRESENT, ""),
        ('labels.""', ("labels", ""), Operator.PRESENT, ""),
        ("name==foo", ("name",), Operator.EQUAL, "foo"),
        ("name!=foo", ("name",), Operator.NOT_EQUAL, "foo"),
        ("name~=foo", ("name",), Operator.MATCHES, "foo"),
        # Whitespace may precede a field, an operator or a value.
        (" name == foo", ("name",), Operator.EQUAL, "foo"),
        ("labels. foo==x", ("labels", "foo"), Operator.EQUAL, "x"),
        ("name==\t\nfoo", ("name",), Operator.EQUAL, "foo"),
        # Bare values take any graphic character except ",".
        ("name==a.b-c_d/e:f@sha256:0", ("name",), Operator.EQUAL, "a.b-c_d/e:f@sha256:0"),
        ("name==a=b!c~d", ("name",), Operator.EQUAL, "a=b!c~d"),
        ('name==a"b', ("name",), Operator.EQUAL, 'a"b'),
        ("name==`x`", ("name",), Operator.EQUAL, "`x`"),
        ("name=='x'", ("name",), Operator.EQUAL, "'x'"),
        ("name==牛", ("name",), Operator.EQUAL, "牛"),
        ("name==<>", ("name",), Operator.EQUAL, "<>"),
        # Quoted values.
        ('name==""', ("name",), Operator.EQUAL, ""),
        ('name=="a, b"', ("name",), Operator.EQUAL, "a, b"),
        ('name=="a/b|c"', ("name",), Operator.EQUAL, "a/b|c"),
        ('name~=/a"b/', ("name",), Operator.MATCHES, 'a"b'),
        ("name~=|a/b|", ("name",), Operator.MATCHES, "a/b"),
        ("name~=|牛|", ("name",), Operator.MATCHES, "牛"),
        ("name~=/a\\/b/", ("name",), Operator.MATCHES, "a/b"),
        ("name~=|a\\|b|", ("name",), Operator.MATCHES, "a|b"),
        ('name~="a\\"b"', ("name",), Operator.MATCHES, 'a"b'),
    ],
)
def test_single_selector(text: str, path: tuple[str, ...], operator: Operator, value: str) -> None:
    assert parse(text) == Selector(path, operator, value)


@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        ("\\a\\b\\f\\n\\r\\t\\v", "\a\b\f\n\r\t\v"),
        ("\\\\", "\\"),
        ('\\"', '"'),
        ("\\101\\060", "A0"),
        ("\\x41\\x7e", "A~"),
        ("\\xc3\\xa9", "é"),  # bytes combine into one UTF-8 character
        ("\\303\\251", "é"),
        ("\\u00e9\\u725b", "é牛"),
        ("\\U0001F600", "\U0001f600"),
        ("\\ud800", "\ufffd"),  # Go writes U+FFFD for a surrogate code point
        ("tab\there", "tab\there"),
    ],
)
def test_escapes(escaped: str, expected: str) -> None:
    assert parse(f'labels."{escaped}"=="{escaped}"') == Selector(
        ("labels", expected), Operator.EQUAL, expected
    )


def test_invalid_utf8_bytes_never_equal_text() -> None:
    f = parse('name=="\\xff"')
    assert isinstance(f, Selector)
    assert not f.match(adapt(Obj("\xff")))
    assert not f.match(adapt(Obj("ÿ")))


def test_bare_value_backslashes_are_literal() -> None:
    assert parse("name~=\\d+") == Selector(("name",), Operator.MATCHES, "\\d+")
    assert parse("name~=\\d+").match(adapt(Obj("abc123")))


# --------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        (",", 0, "expected a field name"),
        (" ", 1, "expected a field name"),
        ("==x", 0, "expected a field name"),
        ("name==foo,", 10, "expected a field name"),
        ("name==foo,,x", 10, "expected a field name"),
        ("labels.", 7, "expected a field name"),
        ("labels..x", 7, "expected a field name"),
        ('labels.?"x"', 7, "expected a field name"),
        ("labels.|foo|==x", 7, "invalid quote"),
        ("labels./foo/", 7, "invalid quote"),
        ("labels.`foo`", 7, "expected a field name"),
        ("name ", 5, "expected an operator"),
        ("name ,x", 5, "expected an operator"),
        ("name=", 4, "unsupported operator '='"),
        ("name===x", 4, "unsupported operator '==='"),
        ("name=~x", 4, "unsupported operator '=~'"),
        ("name!x", 4, "unsupported operator '!'"),
        ("name==!x", 4, "unsupported operator '==!'"),
        ("name x", 5, "expected an operator"),
        ("labels.ns/key==v", 9, "expected an operator"),
        ("name==", 6, "expected a value"),
        ("name==  ", 8, "expected a value"),
        ("name==,x", 6, "expected a value"),
        ("name==.x", 6, "expected a value"),
        ("image~=,id?=?fbaq", 7, "expected a value"),
        ("name== =x", 7, "expected a value"),
        ("name==|a|", 6, "invalid quote"),
        ("name!=/a/", 6, "invalid quote"),
        ("labels.key==/value", 12, "quoted literal not terminated"),
        ('name=="abc', 6, "quoted literal not terminated"),
        ('name=="a\nb"', 6, "quoted literal not terminated"),
        ('name=="abc\\', 6, "quoted literal not terminated"),
        ('labels."abc', 7, "quoted literal not terminated"),
        ("name~=/abc", 6, "quoted literal not terminated"),
        ("name==foo bar", 9, "unexpected ' '"),
        ("name==foo ", 9, "unexpected ' '"),
        ('name=="foo"bar', 11, "unexpected 'b'"),
        ("name==a\x01b", 7, "unexpected '\\x01'"),
        ("a b", 2, "expected an operator"),
        ('name=="\\q"', 7, "illegal escape sequence \\q"),
        ('name=="\\\'"', 7, "illegal escape sequence"),
        ('name=="\\/"', 7, "illegal escape sequence \\/"),  # \/ only inside /.../
        ("name~=/\\d/", 7, "illegal escape sequence \\d"),
        ('name=="\\12"', 7, "illegal numeric escape"),
        ('name=="\\400"', 7, "greater than"),
        ('name=="\\xg0"', 7, "illegal numeric escape"),
        ('name=="\\u12"', 7, "illegal numeric escape"),
        ('name=="\\U00110000"', 7, "not a Unicode code point"),
        ("na\x00me", 2, "NUL"),
        ('name=="a\x00"', 8, "NUL"),
        ("name==\ud800", 6, "surrogate"),
    ],
)
def test_errors_report_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse(text)
    err = info.value
    assert err.position == position
    assert reason in err.reason
    assert err.text == text
    assert f"at {position}: " in str(err)
    assert str(err).startswith("filters: parse error: [")


def test_error_is_invalid_argument_and_points_at_character() -> None:
    with pytest.raises(errdefs.InvalidArgument) as info:
        parse("image~=,id")
    assert info.value.code == errdefs.CODE_INVALID_ARGUMENT
    assert str(info.value) == (
        "filters: parse error: [image~= >|,|< id]: at 7: expected a value or a quoted value"
    )


def test_error_at_end_shows_whole_input() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse("name==")
    expected = "filters: parse error: [name==]: at 6: expected a value or a quoted value"
    assert str(info.value) == expected


# --------------------------------------------------------------------------
# Adaptors


def test_adapt_mapping_nodes() -> None:
    inner = adapt_func(lambda path: ("deep", True) if list(path) == ["x", "y"] else ("", False))
    a = adapt_mapping(
        {
            "name": "img",
            "empty": "",
            "parent": ("", True),
            "gone": None,
            "target": {"digest": "sha256:abc", "mediatype": ""},
            "annotations": LabelMap({"org.opencontainers.x": "1"}),
            "event": inner,
        },
        labels={"k": "v"},
    )
    assert a.field(["name"]) == ("img", True)
    assert a.field(["empty"]) == ("", False)
    assert a.field(["parent"]) == ("", True)
    assert a.field(["gone"]) == ("", False)
    assert a.field(["missing"]) == ("", False)
    assert a.field(["name", "sub"]) == ("", False)
    assert a.field(["parent", "sub"]) == ("", False)
    assert a.field(["target"]) == ("", False)
    assert a.field(["target", "digest"]) == ("sha256:abc", True)
    assert a.field(["target", "mediatype"]) == ("", False)
    assert a.field(["target", "nope"]) == ("", False)
    assert a.field(["annotations", "org", "opencontainers", "x"]) == ("1", True)
    assert a.field(["labels", "k"]) == ("v", True)
    assert a.field(["labels"]) == ("", False)
    assert a.field(["event", "x", "y"]) == ("deep", True)
    assert a.field(["event", "x"]) == ("", False)
    assert a.field([]) == ("", False)


def test_explicit_presence_enables_empty_equality() -> None:
    # A root snapshot: containerd reports "parent" present even when empty.
    root = adapt_mapping({"name": "s1", "parent": ("", True)})
    assert parse('parent==""').match(root)
    assert parse("parent").match(root)
    assert not parse("parent==s0").match(root)


def test_labels_argument_overrides_fields_entry() -> None:
    a = adapt_mapping({"labels": "scalar"}, labels={"k": "v"})
    assert a.field(["labels", "k"]) == ("v", True)


def test_adapt_func_sees_whole_path() -> None:
    seen: list[tuple[str, ...]] = []

    def fn(path: Sequence[str]) -> tuple[str, bool]:
        seen.append(tuple(path))
        return ("v", True)

    assert parse('a."b.c".d==v').match(adapt_func(fn))
    assert seen == [("a", "b.c", "d")]


def test_filters_are_filters() -> None:
    for f in (ALWAYS, parse("a"), parse("a,b"), parse_all(["a", "b"])):
        assert isinstance(f, Filter)


def test_long_input_is_linear() -> None:
    text = ",".join(f"labels.k{i}==v{i}" for i in range(20000))
    f = parse(text)
    assert isinstance(f, AllOf)
    assert len(f.filters) == 20000


# --------------------------------------------------------------------------
# Properties


_any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))
_fragments = st.sampled_from(
    [
        "name",
        "labels",
        ".",
        ",",
        "==",
        "!=",
        "~=",
        "=",
        "!",
        "~",
        '"',
        "/",
        "|",
        "\\",
        "\\x",
        "\\u",
        "\\0",
        "\\n",
        " ",
        "\n",
        "\x00",
        "a",
        "9",
        "牛",
        "[",
        "(",
        "*",
        "`",
        "'",
    ]
)
_grammarish = st.lists(st.one_of(_fragments, st.text(_any_char, max_size=3)), max_size=20).map(
    "".join
)
_probe = adapt_mapping(
    {"name": "foo", "a": "9", "target": {"digest": "x"}}, labels={"name": "牛", "": "e"}
)


def _parses_or_invalid(text: str) -> None:
    try:
        f = parse(text)
    except errdefs.InvalidArgument as err:
        assert isinstance(err, FilterSyntaxError)
        assert 0 <= err.position <= len(text)
        return
    # Anything that parses must also match without raising.
    assert isinstance(f.match(_probe), bool)


@settings(max_examples=500)
@given(st.text(_any_char))
def test_arbitrary_text_parses_or_is_invalid(text: str) -> None:
    _parses_or_invalid(text)


@settings(max_examples=1000)
@given(_grammarish)
def test_grammar_like_text_parses_or_is_invalid(text: str) -> None:
    _parses_or_invalid(text)


_no_surrogates = st.text(st.characters(exclude_categories=("Cs",)))


@given(_no_surrogates, _no_surrogates)
def test_quote_round_trips(key: str, value: str) -> None:
    f = parse(f"labels.{quote(key)}=={quote(value)}")
    assert f == Selector(("labels", key), Operator.EQUAL, value)
    assert f.match(adapt_mapping({}, labels={key: value}))
    assert parse(f"name~={quote(value)}") == Selector(("name",), Operator.MATCHES, value)


def test_quote_rejects_surrogates() -> None:
    with pytest.raises(ValueError):
        quote("\udc80")


@given(st.lists(_grammarish, max_size=4))
def test_parse_all_is_or_of_parse(texts: list[str]) -> None:
    try:
        parts = [parse(t) for t in texts]
    except errdefs.InvalidArgument:
        with pytest.raises(errdefs.InvalidArgument):
            parse_all(texts)
        return
    combined = parse_all(texts)
    expected = not parts or any(p.match(_probe) for p in parts)
    assert combined.match(_probe) == expected
