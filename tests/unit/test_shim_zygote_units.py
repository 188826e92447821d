"""The zygote's small rules and its request protocol, without runc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.shim import zygote


@pytest.fixture
def short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="b.", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_enabled_unless_switched_off() -> None:
    assert zygote.enabled({})
    assert zygote.enabled({zygote.DISABLE_ENV: "1"})
    for off in ("0", "false", "No", " off "):
        assert not zygote.enabled({zygote.DISABLE_ENV: off})


def test_linger_defaults_on_garbage() -> None:
    assert zygote._linger({}) == zygote.DEFAULT_LINGER
    assert zygote._linger({zygote.LINGER_ENV: "2.5"}) == 2.5
    assert zygote._linger({zygote.LINGER_ENV: "soon"}) == zygote.DEFAULT_LINGER
    assert zygote._linger({zygote.LINGER_ENV: "-3"}) == 0.0


def test_zygote_socket_is_keyed_by_daemon_address_under_state_dir() -> None:
    a = zygote.zygote_path("/run/x/a.sock", "/run/x")
    assert a.startswith("/run/x/s/zygote-")
    assert a == zygote.zygote_path("/run/x/a.sock", "/run/x")
    assert a != zygote.zygote_path("/run/x/b.sock", "/run/x")
    deep = "/tmp/" + "d" * 90
    fallback = zygote.zygote_path(deep + "/c.sock", deep)
    assert fallback.startswith(zygote.DEFAULT_STATE_DIR + "/s/zygote-")
    assert len(fallback) <= zygote.SOCKET_PATH_MAX


def test_zygote_argv_reserves_title_room() -> None:
    argv = zygote.zygote_argv(["/bin/shim"], "/run/x/a.sock")
    assert argv[:4] == ["/bin/shim", "-address", "/run/x/a.sock", "zygote"]
    assert len(argv[4]) == zygote.TITLE_ROOM and not argv[4].strip()


_TITLE = """
import sys
from berth.shim.zygote import set_proctitle
title = ["y" * 100000] if sys.argv[2:] == ["LONG"] else sys.argv[2:]
ok = set_proctitle(title)
sys.stdout.buffer.write(repr((ok, open('/proc/self/cmdline', 'rb').read())).encode())
"""


def _title(room: int, *title: str) -> tuple[bool, bytes]:
    out = subprocess.run(
        [sys.executable, "-c", _TITLE, " " * room, *title],
        capture_output=True,
        check=True,
    ).stdout
    ok, cmdline = eval(out)  # a repr of (bool, bytes) we printed ourselves
    return ok, cmdline


def test_set_proctitle_rewrites_cmdline_in_place() -> None:
    ok, cmdline = _title(200, "/x/shim", "-id", "abc")
    assert ok
    assert cmdline.startswith(b"/x/shim\0-id\0abc\0")
    assert cmdline.rstrip(b"\0") == b"/x/shim\0-id\0abc"


def test_set_proctitle_cuts_what_does_not_fit() -> None:
    ok, cmdline = _title(0, "LONG")
    assert ok
    assert cmdline.endswith(b"\0")
    assert set(cmdline[:-1]) == {ord("y")}


def test_flags_from_request_rejects_bad_fields() -> None:
    good = {"namespace": "ns", "id": "c1", "address": "/a", "publish_binary": "/p"}
    flags = zygote._flags_from({**good, "debug": "1"})
    assert (flags.namespace, flags.id, flags.debug) == ("ns", "c1", True)
    assert zygote._flags_from({**good, "debug": ""}).debug is False
    with pytest.raises(zygote.ZygoteError, match="must not be empty"):
        zygote._flags_from({**good, "namespace": ""})
    with pytest.raises(KeyError):
        zygote._flags_from({"id": "c1"})


def test_request_round_trips_fields_and_environment() -> None:
    fields = {"namespace": "ns", "id": "c1", "bundle": "/b=c", "debug": ""}
    env = {"PATH": "/bin:/usr/bin", "EQ": "a=b=c", "EMPTY": "", "RAW": "caf\udce9"}
    msg = zygote.encode_request(fields, env)
    assert zygote.decode_request(msg) == (fields, env)
    assert b"\xe9" in msg  # undecodable bytes travel as they were
    assert zygote.decode_request(b"") == ({}, {})


def test_request_refuses_nul_and_malformed_items() -> None:
    with pytest.raises(ValueError, match="NUL"):
        zygote.encode_request({"id": "c\0"}, {})
    with pytest.raises(ValueError, match="malformed"):
        zygote.decode_request(b"id=c1\0novalue")
    with pytest.raises(ValueError, match="malformed"):
        zygote.decode_request(b"=x")


def _fake_zygote(path: str, reply: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            msg, fds, _, _ = socket.recv_fds(conn, zygote.MESSAGE_MAX, 1)
            fields, env = zygote.decode_request(msg)
            assert fields["id"] == "c1" and env == {"A": "1"} and len(fds) == 1
            for fd in fds:
                os.close(fd)
            conn.send(reply)

    t = threading.Thread(target=serve)
    t.start()
    return t


def _request(path: str, argv: list[str]) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        return zygote.request_shim(
            path=path,
            zygote_argv=argv,
            listener=listener,
            namespace="ns",
            id="c1",
            address="/a",
            publish_binary="/p",
            debug=False,
            bundle="/",
            env={"A": "1"},
        )


def test_request_returns_the_pid_the_zygote_reports(short: Path) -> None:
    path = str(short / "z")
    t = _fake_zygote(path, b"pid=4242")
    assert _request(path, ["/bin/false"]) == 4242
    t.join()


def test_request_raises_when_the_zygote_refuses(short: Path) -> None:
    path = str(short / "z")
    t = _fake_zygote(path, b"error=no room")
    with pytest.raises(zygote.ZygoteError, match="no room"):
        _request(path, ["/bin/false"])
    t.join()


def test_request_raises_on_a_garbled_reply(short: Path) -> None:
    path = str(short / "z")
    t = _fake_zygote(path, b'{"pid": 4242}')
    with pytest.raises(zygote.ZygoteError, match="malformed reply"):
        _request(path, ["/bin/false"])
    t.join()


def test_request_falls_back_when_no_zygote_can_start(short: Path) -> None:
    # The "zygote" exits at once without listening: the caller spawns instead.
    assert _request(str(short / "s" / "z"), ["/bin/false"]) is None


def test_zygote_refuses_a_request_without_a_socket(short: Path) -> None:
    path = str(short / "z")
    listener = zygote._bind(path)
    assert listener is not None
    z = zygote._Zygote(path, listener, ["/bin/shim"])
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            theirs.send(zygote.encode_request({"namespace": "ns", "id": "c1"}, {}))
            z._serve_request(ours)
            answer = theirs.recv(4096)
        assert answer == b"error=request must carry the shim's listening socket"
        assert z.children == {}
    finally:
        z.close()
    assert not os.path.exists(path)


def test_a_second_zygote_does_not_steal_a_live_socket(short: Path) -> None:
    path = str(short / "z")
    first = zygote._bind(path)
    assert first is not None
    try:
        assert zygote._bind(path) is None
    finally:
        first.close()
    # Now stale: the next zygote replaces it.
    again = zygote._bind(path)
    assert again is not None
    again.close()
    assert sorted(os.listdir(short)) == ["z"]


def _race_to_bind(path: str, racers: int) -> list[socket.socket]:
    """``racers`` threads bind the zygote socket at once, as zygotes spawned
    by concurrent starts do; the listeners they got."""
    barrier = threading.Barrier(racers)
    won: list[socket.socket] = []
    errors: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            s = zygote._bind(path)
        except BaseException as exc:
            errors.append(exc)
        else:
            if s is not None:
                won.append(s)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return won


def test_concurrent_zygotes_bind_one_socket_and_never_take_a_fresh_one(short: Path) -> None:
    # Every round, four zygotes find the socket absent or dead (its zygote
    # killed): exactly one may take it, and the socket left at the path
    # must be that one's, never one removed from under it.
    path = str(short / "s" / "z")
    for round in range(150):
        if round % 2 == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
                dead.bind(path)
        won = _race_to_bind(path, 4)
        try:
            assert len(won) == 1, f"round {round}: {len(won)} zygotes listen"
            # The winner's listener is the one behind the path: a connection
            # made there is queued on it.
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                c.connect(path)
                won[0].settimeout(5)
                conn, _ = won[0].accept()
                conn.close()
        finally:
            for s in won:
                s.close()
            os.unlink(path)
    assert os.listdir(short / "s") == []


def _claim_in_thread(path: str) -> tuple[threading.Thread, list[int | None]]:
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(zygote._claim(path)))
    t.start()
    return t, got


def test_a_second_claim_waits_then_yields_to_the_served_socket(short: Path) -> None:
    path = str(short / "s" / "z")
    first = zygote._claim(path)
    assert first is not None
    try:
        t, got = _claim_in_thread(path)
        # Its holder is still "pre-loading": the second one waits.
        t.join(0.3)
        assert t.is_alive() and got == []
        listener = zygote._bind(path)
        assert listener is not None
        t.join()
        # Served now: the second zygote is not needed, and claims nothing.
        assert got == [None]
        listener.close()
        os.unlink(path)
    finally:
        zygote._release(path, first)
    assert os.listdir(short / "s") == []


def test_a_released_claim_passes_to_the_waiting_zygote(short: Path) -> None:
    # A zygote on its way out removes its lock file before letting go; the
    # one waiting on the removed file must claim the path afresh, and no
    # third one may claim it meanwhile.
    path = str(short / "s" / "z")
    first = zygote._claim(path)
    assert first is not None
    t, got = _claim_in_thread(path)
    t.join(0.3)
    assert t.is_alive()
    zygote._release(path, first)
    t.join()
    (second,) = got
    assert second is not None
    try:
        assert os.stat(path + ".lock").st_ino == os.fstat(second).st_ino
        third, third_got = _claim_in_thread(path)
        third.join(0.3)
        assert third.is_alive() and third_got == []
    finally:
        zygote._release(path, second)
    third.join()
    (claim,) = third_got
    assert claim is not None
    zygote._release(path, claim)
    assert os.listdir(short / "s") == []
