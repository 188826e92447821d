"""The exact bytes a terminal (``-t``) run delivers, through the real path:
local pty -> ``berth run`` or Debian's ``ctr run`` -> berthd -> shim (Berth's
and Debian's Go shim) -> runc's console socket -> the container's pty.

Nothing may add to, drop from or reorder what the container's terminal
produced. A report of "a NUL at the start of tty output" came from running
the client under ``script -qc ... </dev/null``: ``script`` writes the EOF
character to its pty when its own stdin ends, the line discipline keeps a
pending canonical EOF as a 0x00 byte, and once the client switches its
terminal to raw (without flushing, as ctr and docker also do, so that
type-ahead is kept) it reads and forwards that byte; the container's pty then
echoes it as the two characters ``^@``. containerd 1.6 with ctr and its Go
shim does exactly the same. The last test pins that type-ahead behaviour so
the glitch is not "fixed" by discarding what the user typed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import secrets
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from tests.support.daemon import Berthd, env_with_src
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-tty:1"
# runc state is host-wide: ids must not collide with another daemon's.
RUN = secrets.token_hex(3)
RUNTIMES = pytest.mark.parametrize(
    "runtime", ["io.containerd.berth.v2", "io.containerd.runc.v2"], ids=["berth-shim", "go-shim"]
)


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


def run_on_pty(argv: list[str], *, typed_ahead: bytes = b"", timeout: float = 60) -> bytes:
    """Run ``argv`` with a fresh 24x80 pty as its stdin, stdout and stderr and
    return every byte it wrote there. ``typed_ahead`` is put on the pty before
    the client starts, as keys typed while it is still loading; nothing else
    is ever written to the pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    if typed_ahead:
        os.write(master, typed_ahead)
    proc = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env_with_src(),
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break  # EIO: every slave descriptor is closed, the client is gone
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        code = proc.wait(30)
    finally:
        os.close(master)
    assert code == 0, (code, out)
    return out


def berth(d: Berthd, *args: str) -> list[str]:
    return [sys.executable, "-m", "berth.cli.main", "--address", d.address, *args]


def ctr(d: Berthd, *args: str) -> list[str]:
    return ["ctr", "--address", d.address, "--namespace", "default", *args]


def no_container_left(d: Berthd, cid: str) -> bool:
    return cid not in d.ctr("containers", "ls", "-q").stdout.split()


@contextlib.contextmanager
def removed_after(d: Berthd, cid: str) -> Iterator[str]:
    """Yield ``cid``; if a failed test left its container behind (a client
    killed on timeout does not remove it), kill and remove it, so no shim,
    process or mount outlives the module's daemon."""
    try:
        yield cid
    finally:
        if cid in d.ctr("tasks", "ls", "-q", check=False).stdout.split():
            d.ctr("tasks", "delete", "--force", cid, check=False)
        if not no_container_left(d, cid):
            d.ctr("containers", "delete", cid, check=False)


@RUNTIMES
def test_berth_run_tty_delivers_exactly_the_terminal_output(d: Berthd, runtime: str) -> None:
    with removed_after(d, f"ttyb-{runtime.split('.')[-2]}-{RUN}") as cid:
        out = run_on_pty(
            berth(d, "run", "--rm", "-t", "--runtime", runtime, IMAGE, cid, "echo", "hi")
        )
        # The container's pty turns "\n" into "\r\n"; berth's raw local
        # terminal passes it through untouched.
        assert out == b"hi\r\n"
        assert no_container_left(d, cid)


@RUNTIMES
def test_ctr_run_tty_against_berthd_delivers_what_containerd_does(d: Berthd, runtime: str) -> None:
    with removed_after(d, f"ttyc-{runtime.split('.')[-2]}-{RUN}") as cid:
        out = run_on_pty(
            ctr(d, "run", "--rm", "-t", "--runtime", runtime, IMAGE, cid, "echo", "hi")
        )
        # ctr leaves output post-processing on in its raw mode, so the local
        # pty adds a CR to the container's "\r\n": the same bytes ctr gets
        # from containerd 1.6 with either shim.
        assert out == b"hi\r\r\n"
        assert no_container_left(d, cid)


@pytest.mark.parametrize(
    ("typed", "byte"),
    [(b"x", b"78"), (b"\x04", b"00")],
    ids=["printable", "pending-eof-is-a-nul"],
)
def test_type_ahead_on_the_local_terminal_reaches_the_process(
    d: Berthd, typed: bytes, byte: bytes
) -> None:
    # The container's terminal goes raw so that one byte can be read without a
    # newline; whether the container's pty echoed it before that is a race, so
    # only od's report is asserted.
    script = "stty raw -echo; head -c 1 | od -An -tx1"
    with removed_after(d, f"ttyt-{byte.decode()}-{RUN}") as cid:
        out = run_on_pty(
            berth(d, "run", "--rm", "-t", IMAGE, cid, "sh", "-c", script), typed_ahead=typed
        )
        assert b" " + byte + b"\n" in out, out
        assert no_container_left(d, cid)
