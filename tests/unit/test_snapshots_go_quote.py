"""Snapshot error messages quote keys as Go's %q (strconv.Quote) does."""

from __future__ import annotations

import pytest

from berth import errdefs
from berth.core.snapshots import Info, apply_label_update
from berth.errdefs import go_quote


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("dupx", '"dupx"'),
        ("", '""'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("a\x00b\x1b\x7f", '"a\\x00b\\x1b\\x7f"'),
        ("clé ключ 😀", '"clé ключ 😀"'),
        ("\u0085\u00a0\u200b", '"\\u0085\\u00a0\\u200b"'),
        ("\U000e0001", '"\\U000e0001"'),
    ],
)
def test_go_quote_matches_strconv_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


def test_label_update_error_names_field_and_snapshot_as_containerd() -> None:
    with pytest.raises(errdefs.InvalidArgument) as exc:
        apply_label_update({}, Info("it's"), ["parent"])
    assert str(exc.value) == ('cannot update "parent" field on snapshot "it\'s": invalid argument')
