"""Snapshot errors read as containerd's: the same ctr commands fail with the same words.

Each step runs the real ``ctr snapshots`` against Debian's containerd 1.6 and
against berthd (native snapshotter on both) and compares what ctr printed,
quoting included: containerd names keys with Go's ``%q`` in some messages and
bare in others, and Berth follows it message by message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.containerd_peer import Containerd, available
from tests.support.daemon import Berthd, running_berthd
from tests.support.oci_bundle import cleanup_base, short_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="containerd, ctr or runc not installed"),
]

NAMESPACE = "berth-test"  # the peer's ctr always uses it
ODD_KEY = 'dup é"x\ty'  # Go's %q keeps the é, escapes the quote and the tab


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Containerd, Berthd]]:
    base = short_dir("b.cd.")
    containerd = Containerd(base)
    try:
        containerd.start()
        with running_berthd() as berthd:
            yield containerd, berthd
    finally:
        containerd.stop()
        cleanup_base(base)


STEPS: list[tuple[tuple[str, ...], str]] = [
    (("prepare", "dupx"), ""),
    (("prepare", "dupx"), 'ctr: snapshot "dupx": already exists'),
    (("prepare", ODD_KEY), ""),
    (("prepare", ODD_KEY), 'ctr: snapshot "dup é\\"x\\ty": already exists'),
    (("prepare", "kid", "nope"), "ctr: parent snapshot nope does not exist: not found"),
    (("commit", "dupc", "dupx"), ""),
    (("prepare", "dupx2"), ""),
    (("commit", "dupc", "dupx2"), 'ctr: snapshot "dupc": already exists'),
    (("commit", "x", "missing"), "ctr: snapshot missing does not exist: not found"),
    (("prepare", "kid2", "dupc"), ""),
    (
        ("rm", "missing"),
        'ctr: failed to remove "missing": snapshot missing does not exist: not found',
    ),
    (
        ("rm", "dupc"),
        'ctr: failed to remove "dupc": cannot remove snapshot with child: failed precondition',
    ),
    (("info", "missing"), "ctr: snapshot missing does not exist: not found"),
    (("label", "missing", "a=b"), "ctr: snapshot missing does not exist: not found"),
]


def test_snapshot_errors_match_containerds_word_for_word(
    peers: tuple[Containerd, Berthd],
) -> None:
    containerd, berthd = peers
    cmd = ("snapshots", "--snapshotter", "native")
    for step, expected in STEPS:
        theirs = containerd.ctr(*cmd, *step, check=False)
        ours = berthd.ctr(*cmd, *step, namespace=NAMESPACE, check=False)
        assert theirs.stderr.strip() == expected, (step, theirs.stderr)
        assert (ours.returncode, ours.stderr.strip()) == (theirs.returncode, expected), step
