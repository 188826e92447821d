"""asyncio plumbing shared by the ttrpc client and server.

Owns the bits both ends need around a unix-socket transport and nothing
protocol-specific: write back-pressure (so a peer that stops reading makes
writers wait instead of growing an unbounded buffer), peer credentials, and
parsing containerd-style ``unix://`` addresses.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (all 32-bit on Linux)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process as the kernel saw it at connect(2) (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(transport: asyncio.BaseTransport) -> PeerCredentials | None:
    """SO_PEERCRED of a unix transport; None where unavailable."""
    sock = transport.get_extra_info("socket")
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or so_peercred is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def socket_path(address: str) -> str:
    """Accept containerd's ``unix:///path`` form as well as a bare path.

    A leading ``@`` names an abstract socket, as Go's net package spells it.
    """
    if address.startswith("unix://"):
        address = address[len("unix://") :]
    if address.startswith("@"):
        address = "\0" + address[1:]
    if not address:
        raise ValueError("empty socket address")
    if len(os.fsencode(address)) > 107:
        # sockaddr_un.sun_path is 108 bytes including the terminator; the
        # kernel would fail with a less helpful "AF_UNIX path too long".
        raise ValueError(f"unix socket path longer than 107 bytes: {address!r}")
    return address


class FlowControlProtocol(asyncio.Protocol):
    """A protocol that lets coroutines wait while the transport's buffer is full."""

    def __init__(self) -> None:
        self._paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._connection_lost = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        self._paused = False
        self._wake_drainers(exc or ConnectionResetError("connection lost"))

    async def drain(self) -> None:
        """Return once the transport accepts more data; raise if it is gone."""
        if self._connection_lost:
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._drain_waiters:
                self._drain_waiters.remove(fut)

    def _wake_drainers(self, exc: BaseException | None) -> None:
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if fut.done():
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
