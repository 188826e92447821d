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
