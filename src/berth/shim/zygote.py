"""The shim zygote: one pre-loaded interpreter per daemon that forks shims.

Owns the zygote process (``containerd-shim-berth-v2 -address A zygote``), the
request protocol ``start`` uses to ask it for a shim, and the child's set-up
between ``fork`` and serving.

Design notes (the trade-off)
----------------------------
A shim spawned as a fresh interpreter imports protobuf, the generated
``_pb2`` modules, ttrpc and the Task service on its own, and every byte of
that heap is private to it: ~17 MiB PSS per container, six times Go's runc
shim. A process forked from an interpreter that already holds all of that
shares those pages copy-on-write, and pays only for what it writes.

What keeps the writes down:

* the zygote disables the cyclic GC before importing and calls
  ``gc.freeze()`` afterwards, so no collection in a child ever walks (and so
  writes the GC headers of) the pre-loaded objects; each child re-enables
  the GC for its own garbage;
* the zygote has no event loop, no threads, no signal handlers: it is a plain
  ``poll`` loop, and each child builds a fresh loop, exactly as a spawned
  server does (:func:`berth.shim.server.serve`);
* reference-count updates still dirty the pages of objects a child touches
  (Python 3.11 has no immortal objects); ``bench/shim_footprint.py`` measures
  what is left.

Lifetime and failure:

* the first ``start`` for a daemon address finds no zygote, spawns one
  detached (its own session, stdio on ``/dev/null``) and waits until its
  socket answers; later starts reuse it. The socket lives in the shim state
  directory (``<state>/s/zygote-<hash of the address>``), so the zygote works
  under berthd and Debian's containerd alike and outlives daemon restarts;
* starts that find no zygote at the same moment each spawn one, and exactly
  one of those may serve. Before its costly pre-load a zygote claims the
  address with an exclusive ``flock`` on ``<socket>.lock``, held for its
  life; the others wait without pre-loading (pre-loads running at once
  would share the CPUs and slow the one that matters) and exit as soon as
  the claimant's socket answers, which is also when their starts connect to
  it. The socket is published as ``start`` publishes a server's: bound
  under a private name, then hard-linked into place, a dead one removed
  only under the directory lock (``berth.shim.main._listen``), so even a
  zygote that skipped the claim can never take the name from a live one
  and be left serving a deleted socket;
* shims are the zygote's children only until it goes: each calls ``setsid``
  and becomes a child subreaper, and needs nothing from the zygote after the
  fork, so killing the zygote leaves every container running;
* the zygote exits ``linger`` seconds after its last shim exited and no start
  came (``BERTH_SHIM_ZYGOTE_LINGER``, default 5), removing its socket and
  then its lock file; or at once when its socket path no longer leads to it;
* ``start`` falls back to spawning a fresh interpreter when the zygote cannot
  be started or reached, or when ``BERTH_SHIM_ZYGOTE=0`` is set in the
  environment the daemon gives its shims.

The request is one ``SOCK_SEQPACKET`` message carrying the shim's listening
socket as ``SCM_RIGHTS``: NUL-separated ``key=value`` items (namespace, id,
address, publish binary, debug, bundle directory) followed by the full
environment as ``env:NAME=VALUE`` items; none of these can contain a NUL.
The reply is ``pid=N`` or ``error=MESSAGE``. Only a peer with the zygote's
own uid is served. The protocol's version is part of the socket's name, so
a ``start`` never talks to a zygote left running by another version.

``ps`` shows each forked shim with its own ``-namespace``/``-id`` flags: the
zygote is spawned with spare room at the end of its argument block, and the
child rewrites that block in place (see :func:`set_proctitle`).

``start`` uses the client side, which must stay as cheap to import as
:mod:`berth.shim.main` (see there): it uses only ``os``, ``sys``, ``time``
and ``_socket``, and a plain text request rather than JSON. The zygote side
imports what it needs inside its functions.
"""

from __future__ import annotations

import os
import sys
import time

from berth.shim.main import Flags, sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from _socket import socket as Socket
    from collections.abc import Mapping, Sequence

__all__ = [
    "DISABLE_ENV",
    "LINGER_ENV",
    "ZygoteError",
    "decode_request",
    "enabled",
    "encode_request",
    "request_shim",
    "run",
    "set_proctitle",
    "zygote_path",
]

DISABLE_ENV = "BERTH_SHIM_ZYGOTE"
LINGER_ENV = "BERTH_SHIM_ZYGOTE_LINGER"
DEFAULT_LINGER = 5.0
READY_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
MESSAGE_MAX = 1 << 18
# Spare argv bytes so a forked shim can show its own flags (ids and
# namespaces are at most 76 bytes, socket paths 107).
TITLE_ROOM = 512
SOCKET_PATH_MAX = 107
DEFAULT_STATE_DIR = "/run/berth"
# Bumped whenever the request or reply format changes, or what a forked
# server expects of its request (3: the published socket path arrives in
# the environment, see berth.shim.main._listen).
PROTOCOL = "3"
ENV_PREFIX = "env:"


class ZygoteError(Exception):
    """The zygote refused or failed a request (the shim was not forked)."""


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _linger(environ: Mapping[str, str] = os.environ) -> float:
    try:
        return max(0.0, float(environ.get(LINGER_ENV, DEFAULT_LINGER)))
    except ValueError:
        return DEFAULT_LINGER


def zygote_path(address: str, state_dir: str) -> str:
    """The zygote's socket for the daemon at ``address``."""
    name = f"zygote-{PROTOCOL}-{sha256_hex(address.encode())[:32]}"
    path = os.path.join(state_dir, "s", name)
    if len(path) > SOCKET_PATH_MAX:
        path = os.path.join(DEFAULT_STATE_DIR, "s", name)
    return path


def encode_request(fields: Mapping[str, str], env: Mapping[str, str]) -> bytes:
    """The request message. Raises ValueError if an item holds a NUL."""
    items = [f"{k}={v}" for k, v in fields.items()]
    items += [f"{ENV_PREFIX}{k}={v}" for k, v in env.items()]
    if any("\0" in item for item in items):
        raise ValueError("zygote request items cannot contain NUL")
    return b"\0".join(os.fsencode(item) for item in items)


def decode_request(msg: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """``(fields, env)`` of a request message. Raises ValueError for an
    item that is not ``key=value``."""
    fields: dict[str, str] = {}
    env: dict[str, str] = {}
    for raw in msg.split(b"\0") if msg else []:
        item = os.fsdecode(raw)
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"malformed request item {item[:40]!r}")
        if key.startswith(ENV_PREFIX):
            env[key[len(ENV_PREFIX) :]] = value
        else:
            fields[key] = value
    return fields, env


# -- client side (``start``) ----------------------------------------------------------


def _connect(path: str) -> Socket | None:
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    s.settimeout(REQUEST_TIMEOUT)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def _spawn_zygote(argv: Sequence[str], env: Mapping[str, str]) -> int:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return os.posix_spawn(
            argv[0],
            list(argv),
            dict(env),
            file_actions=[(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)],
            setsid=True,
        )
    finally:
        os.close(null)


def _reap_quietly(pid: int) -> None:
    """The spawned zygote is our child until we exit; don't leave a zombie
    if it already gave up (another zygote won the socket)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _await_zygote(path: str, pid: int, timeout: float) -> Socket | None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        conn = _connect(path)
        if conn is not None:
            return conn
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            # It exited: lost the race to another zygote (try its socket once
            # more) or failed to start.
            return _connect(path)
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def request_shim(
    *,
    path: str,
    zygote_argv: Sequence[str],
    listener: Socket,
    namespace: str,
    id: str,
    address: str,
    publish_binary: str,
    debug: bool,
    bundle: str,
    env: Mapping[str, str],
) -> int | None:
    """Have the zygote at ``path`` fork a shim serving ``listener``; start
    the zygote with ``zygote_argv`` when none answers.

    Returns the shim's pid, or None when no zygote could be reached (the
    caller spawns the shim itself). Raises :class:`ZygoteError` when the
    request reached a zygote that did not answer it: a shim may then exist,
    so spawning another one would be wrong.
    """
    import _socket

    fields = {
        "namespace": namespace,
        "id": id,
        "address": address,
        "publish_binary": publish_binary,
        "debug": "1" if debug else "",
        "bundle": bundle,
    }
    try:
        payload = encode_request(fields, env)
    except ValueError:
        return None
    if len(payload) > MESSAGE_MAX:
        return None
    rights = [
        (_socket.SOL_SOCKET, _socket.SCM_RIGHTS, listener.fileno().to_bytes(4, sys.byteorder))
    ]
    # Two rounds: a zygote that is just lingering out may close between our
    # connect and our send; the second round starts a fresh one.
    for _ in range(2):
        conn = _connect(path)
        if conn is None:
            os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
            try:
                pid = _spawn_zygote(zygote_argv, env)
            except OSError:
                return None
            conn = _await_zygote(path, pid, READY_TIMEOUT)
            _reap_quietly(pid)
            if conn is None:
                return None
        try:
            try:
                conn.sendmsg([payload], rights)
            except OSError:
                continue
            try:
                reply = conn.recv(MESSAGE_MAX)
            except OSError as exc:
                raise ZygoteError(f"shim zygote did not answer: {exc}") from None
        finally:
            conn.close()
        if not reply:
            raise ZygoteError("shim zygote closed the connection without answering")
        return _parse_reply(reply)
    return None


def _parse_reply(reply: bytes) -> int:
    key, _, value = reply.decode(errors="replace").partition("=")
    if key == "error":
        raise ZygoteError(f"shim zygote: {value}")
    if key == "pid" and value.isdigit():
        return int(value)
    raise ZygoteError(f"shim zygote sent a malformed reply {reply[:80]!r}")


def zygote_argv(self_argv: Sequence[str], address: str) -> list[str]:
    """The zygote's command line; the last argument only reserves room for
    the children's titles."""
    return [*self_argv, "-address", address, "zygote", " " * TITLE_ROOM]


# -- process title --------------------------------------------------------------------


def _argv_area() -> tuple[int, int]:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is stat field 3; arg_start and arg_end are fields 48 and 49.
    return int(fields[45]), int(fields[46])


def set_proctitle(args: Sequence[str]) -> bool:
    """Rewrite this process's ``/proc/PID/cmdline`` to ``args`` in the space
    the kernel gave the original arguments (no privilege needed; the area
    cannot grow, so a long title is cut). Returns False if it could not."""
    import ctypes

    try:
        start, end = _argv_area()
    except (OSError, ValueError, IndexError):
        return False
    size = end - start
    if size <= 1:
        return False
    data = b"\0".join(a.encode() for a in args)[: size - 1]
    data += b"\0" * (size - len(data))
    ctypes.memmove(start, data, size)
    return True


def _original_prefix(nargs: int) -> list[str]:
    """The part of our kernel command line before the flags (``[exe]`` or
    ``[python, script]``)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return [sys.executable]
    if args and args[-1] == b"":
        args.pop()
    keep = max(1, len(args) - nargs)
    return [a.decode(errors="replace") for a in args[:keep]]


# -- the zygote -----------------------------------------------------------------------


def _preload() -> None:
    """Import everything a serving shim imports, so children share it."""
    import asyncio  # noqa: F401
    import concurrent.futures.thread  # noqa: F401  (asyncio.to_thread's executor)
    import ctypes  # noqa: F401
    import logging  # noqa: F401

    import berth.shim.events
    import berth.shim.reaper
    import berth.shim.server
    import berth.shim.service
    import berth.ttrpc  # noqa: F401


def _warm_up() -> None:
    """Run a shim's common paths once, before the freeze.

    Python 3.11 rewrites a function's bytecode in place as it warms up
    (adaptive specialisation), and protobuf and asyncio fill caches on first
    use. Done here, those writes land in pages every child shares instead of
    being repeated, and copied, in each of them. The loop is closed again and
    the SIGCHLD handler removed, so forks start from a clean state.
    """
    import asyncio

    asyncio.run(_exercise())


async def _exercise() -> None:
    import asyncio
    import contextlib
    import socket

    from google.protobuf import empty_pb2

    from berth import errdefs
    from berth.api.events import task_pb2 as events
    from berth.api.runtime.v2.task import shim_pb2 as api
    from berth.api.services.ttrpc.events.v1 import events_pb2
    from berth.shim.events import TOPICS, Publisher, pack_any, timestamp
    from berth.shim.reaper import Reaper
    from berth.shim.service import SERVICE, TaskService
    from berth.ttrpc import Client, Server, ServiceStub

    # The default executor (Create mounts the rootfs on it); asyncio.run
    # joins its thread again before the zygote forks anything.
    await asyncio.to_thread(int)
    reaper = Reaper()
    reaper.install()
    publisher = Publisher("", "zygote")
    service = TaskService(
        namespace="zygote",
        reaper=reaper,
        publisher=publisher,
        state_dir="/nonexistent",
        on_shutdown=lambda: None,
    )
    server = Server()
    server.register_service(SERVICE, service)
    ours, theirs = socket.socketpair()
    try:
        await server.accept_socket(ours)
        client = await Client.connect_socket(theirs)
        task = ServiceStub(client, SERVICE)
        for _ in range(3):
            await task.Connect(api.ConnectRequest(id="zygote"))
            for call, req in (
                (task.State, api.StateRequest(id="zygote")),
                (task.Wait, api.WaitRequest(id="zygote")),
                (task.Kill, api.KillRequest(id="zygote", signal=9)),
                (task.Delete, api.DeleteRequest(id="zygote")),
            ):
                with contextlib.suppress(errdefs.NotFound):
                    await call(req)
        await client.close()
        await server.shutdown(timeout=1.0)
    finally:
        service.close()
        reaper.close()
    for kind in TOPICS:
        event = kind(container_id="zygote")
        env = events_pb2.Envelope(
            timestamp=timestamp(), namespace="zygote", topic=TOPICS[kind], event=pack_any(event)
        )
        events_pb2.ForwardRequest(envelope=env).SerializeToString()
    events.TaskExit(container_id="zygote", exited_at=timestamp()).SerializeToString()
    empty_pb2.Empty().SerializeToString()
    await publisher.close(0.1)


def _claim(path: str) -> int | None:
    """Become the one zygote starting for ``path``: a descriptor holding an
    exclusive ``flock`` of ``<path>.lock``, to keep open for the zygote's
    life (its children close it). While another zygote holds the lock this
    one waits, and gives up with None once that one's socket answers (or
    after ``READY_TIMEOUT``, when its ``start`` has given up too).

    A holder removes the file before it lets go (see :func:`_release`), so a
    lock taken on a file no longer at ``<path>.lock`` claims nothing and is
    taken again on the new one. Raises OSError.
    """
    import _socket
    import fcntl

    from berth.shim.main import _LIVE, _probe

    name = path + ".lock"
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if _probe(path, _socket.SOCK_SEQPACKET) == _LIVE or time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _still_ours(name, os.fstat(fd).st_ino):
            return fd
        os.close(fd)


def _release(path: str, claim: int) -> None:
    """Give up the claim :func:`_claim` returned: remove the lock file while
    still holding it, then close it."""
    name = path + ".lock"
    try:
        if _still_ours(name, os.fstat(claim).st_ino):
            os.unlink(name)
    except OSError:
        pass
    finally:
        os.close(claim)


def _bind(path: str) -> socket.socket | None:
    """Listen on ``path`` without ever replacing a live zygote's socket;
    None when another zygote serves ``path``.

    The same discipline as a shim server's group socket, by the same code
    (:func:`berth.shim.main._listen`): bind a private name, hard-link it to
    ``path`` (``link`` fails if the name exists), and remove a socket found
    there only if it refuses connections, deciding and unlinking under the
    directory's lock. Unlinking a stale socket without that lock let two
    zygotes that both found it dead each remove it in turn, the second
    taking the socket the first had just linked: the first then served a
    deleted name until it next woke up. Raises OSError or RuntimeError.
    """
    import _socket
    import socket

    from berth.shim.main import _listen

    s = _listen(path, kind=_socket.SOCK_SEQPACKET, backlog=64)
    if s is None:
        return None
    return socket.socket(fileno=s.detach())


def _still_ours(path: str, ino: int) -> bool:
    try:
        return os.stat(path).st_ino == ino
    except OSError:
        return False


class _Zygote:
    def __init__(
        self, path: str, listener: socket.socket, prefix: list[str], claim: int = -1
    ) -> None:
        import select

        self.path = path
        self.listener = listener
        # The claim's descriptor (see _claim), -1 for none; run() releases it.
        self.claim = claim
        self.ino = os.stat(path).st_ino
        self.prefix = prefix
        self.poller = select.poll()
        self.poller.register(listener.fileno(), select.POLLIN)
        self.pollin = select.POLLIN
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.linger = _linger()

    def loop(self) -> None:
        idle_since = time.monotonic()
        while True:
            timeout: float | None = None
            if not self.children:
                timeout = max(0.0, idle_since + self.linger - time.monotonic())
            ready = self.poller.poll(None if timeout is None else int(timeout * 1000) + 1)
            for fd, _ in ready:
                if fd == self.listener.fileno():
                    self._accept_all()
                    idle_since = time.monotonic()
                else:
                    self._child_exited(fd)
                    if not self.children:
                        idle_since = time.monotonic()
            if not _still_ours(self.path, self.ino):
                return  # replaced or removed: nobody can reach us any more
            if not self.children and time.monotonic() - idle_since >= self.linger:
                return

    def close(self) -> None:
        if _still_ours(self.path, self.ino):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        # Starts that connected before the unlink are still answered.
        self._accept_all()
        self.listener.close()
        for pidfd in self.children:
            os.close(pidfd)

    def _accept_all(self) -> None:
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with conn:
                self._serve_request(conn)

    def _child_exited(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd, 0)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _serve_request(self, conn: socket.socket) -> None:
        import socket

        conn.settimeout(REQUEST_TIMEOUT)
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(creds[4:8], sys.byteorder)
            msg, fds, _, _ = socket.recv_fds(conn, MESSAGE_MAX, 1)
            if uid != os.geteuid():
                raise ZygoteError(f"uid {uid} may not start shims here")
            if len(fds) != 1:
                raise ZygoteError("request must carry the shim's listening socket")
            fields, env = decode_request(msg)
            pid = self._fork(fields, env, fds[0], conn)
        except (ZygoteError, ValueError, KeyError, OSError) as exc:
            reply = "error=" + (str(exc) or type(exc).__name__)
        else:
            reply = f"pid={pid}"
        finally:
            for fd in fds:
                os.close(fd)
        try:
            conn.send(reply.encode(errors="replace"))
        except OSError:
            pass

    def _fork(
        self, fields: Mapping[str, str], env: dict[str, str], listen_fd: int, conn: socket.socket
    ) -> int:
        flags = _flags_from(fields)
        bundle = fields["bundle"]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                code = self._child(flags, bundle, env, listen_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                # Never unwind into the zygote's stack or run its atexit hooks.
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.poller.register(pidfd, self.pollin)
        return pid

    def _child(self, flags: Flags, bundle: str, env: dict[str, str], listen_fd: int) -> int:
        import gc
        import socket

        from berth.shim.server import serve

        # Nothing of the zygote's may stay open in a shim; above all not the
        # claim, which would keep every later zygote waiting for this shim.
        self.listener.close()
        if self.claim >= 0:
            os.close(self.claim)
        for pidfd in self.children:
            os.close(pidfd)
        self.children.clear()
        os.setsid()
        os.chdir(bundle)
        os.environ.clear()
        os.environ.update(env)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        title = [*self.prefix, "-namespace", flags.namespace, "-id", flags.id]
        title += ["-address", flags.address, "-publish-binary", flags.publish_binary]
        set_proctitle(title)
        sys.argv = [title[len(self.prefix) - 1], *title[len(self.prefix) :]]
        gc.enable()
        sock = socket.socket(fileno=listen_fd)
        return serve(flags, sock=sock)


def _flags_from(fields: Mapping[str, str]) -> Flags:
    """The shim's flags from a request's fields. Raises KeyError for a
    missing field and ZygoteError for an empty namespace or id."""
    flags = Flags()
    flags.namespace = fields["namespace"]
    flags.id = fields["id"]
    flags.address = fields["address"]
    flags.publish_binary = fields["publish_binary"]
    if not flags.namespace or not flags.id:
        raise ZygoteError("namespace and id must not be empty")
    flags.debug = fields.get("debug", "") == "1"
    return flags


def run(address: str, state_dir: str) -> int:
    """The zygote's main: pre-load, listen, fork shims until idle."""
    import gc

    os.chdir("/")
    path = zygote_path(address, state_dir)
    claim = _claim(path)
    if claim is None:
        return 0  # another zygote serves this daemon
    try:
        # Freed holes in pre-loaded pages would be filled (and so copied) by
        # every child's first allocations; collect nothing until the freeze.
        gc.disable()
        prefix = _original_prefix(len(sys.argv) - 1)
        _preload()
        _warm_up()
        listener = _bind(path)
        if listener is None:
            return 0  # one holding no claim (an older build's) serves it
        set_proctitle([*prefix, "-address", address, "zygote"])
        gc.collect()
        gc.freeze()
        zygote = _Zygote(path, listener, prefix, claim)
        try:
            zygote.loop()
        finally:
            zygote.close()
    finally:
        _release(path, claim)
    return 0
