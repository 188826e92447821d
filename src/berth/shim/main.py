"""``containerd-shim-berth-v2``: the command line containerd runs.

Owns the shim binary's contract with its caller, as containerd 1.6 defines
it (``runtime/v2/shim``):

* Go-style single-dash flags: ``-namespace``, ``-address``,
  ``-publish-binary``, ``-id``, ``-bundle``, ``-socket``, ``-debug``, ``-v``;
  then an action;
* ``start`` (cwd is the bundle; runtime options may arrive on stdin as a
  serialized ``Any``): listen on a socket under a private name, write the
  bundle's ``address`` file, have the long-running server forked by the
  daemon's zygote (:mod:`berth.shim.zygote`, started on first use) or,
  failing that, spawn it in its own session with the listening socket as
  fd 3, put it in ``ShimCgroup``, and only then publish the socket at the
  shim address (atomically, see ``_publish``); print ``unix://...`` and
  exit. A start that fails after launching its server kills it, as the Go
  shim does: unpublished, it cannot serve anyone else. Containers whose
  spec carries the ``io.containerd.runc.v2.group`` (or CRI sandbox)
  annotation share one server; so do those started with the same
  ``BERTH_SHIM_GROUP`` in the environment (berthd's ``shim_group``
  setting), which lets the daemon group containers without writing to
  their specs;
* ``delete``: clean up after a dead server (``runc delete --force``, unmount
  the rootfs) and print a ``DeleteResponse`` (exit status 128+SIGKILL);
* no action: serve ``containerd.task.v2.Task`` on fd 3 (or ``-socket``);
* ``zygote`` (Berth's own, run only by ``start``): the per-daemon process
  that forks servers.

Socket addresses: containerd puts its shims' sockets in ``<state>/s/<sha256>``
with the hash over ``<address>/<namespace>/<id>``. Berth derives the state
directory from ``-address`` (its parent directory: ``/run/berth`` for
``/run/berth/berth.sock``), so isolated daemons keep isolated shims.

Start-up cost is the point of this module's shape. ``start`` runs once per
task on the daemon's critical path and its interpreter's start-up is most of
what it costs, so its path imports only ``os``, ``sys`` and the C modules
``_socket`` and ``_sha256`` (not ``socket``, ``hashlib``, ``json``,
``contextlib`` or ``typing``, each of which costs milliseconds); it decodes
the runtime options it needs (``ShimCgroup``) from the protobuf wire format
by hand instead of importing protobuf and the service (~100 ms); and it ends
with ``os._exit`` once its answer is out, skipping interpreter teardown.
``delete`` is rare (dead shims) and imports what it likes; the server
imports the service lazily.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket as Socket
    from collections.abc import Mapping

__all__ = [
    "Flags",
    "OptionsError",
    "main",
    "parse_flags",
    "sha256_hex",
    "shim_cgroup_option",
    "socket_address",
]

DEFAULT_STATE_DIR = "/run/berth"
SOCKET_PATH_MAX = 107
GROUP_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS"
SHIM_GROUP_ENV = "BERTH_SHIM_GROUP"
#: Tells the server the path its listening socket is published at (the
#: socket's own name is a private one; see ``_listen``).
SHIM_SOCKET_ENV = "BERTH_SHIM_SOCKET"
SIGKILL = 9


class UsageError(Exception):
    pass


class Flags:
    """Parsed command line. A plain class: ``dataclasses`` costs the
    short-lived ``start``/``delete`` invocations ~20 ms of imports."""

    __slots__ = (
        "action",
        "address",
        "bundle",
        "debug",
        "id",
        "namespace",
        "publish_binary",
        "socket",
        "version",
    )

    def __init__(self) -> None:
        self.namespace = ""
        self.address = ""
        self.publish_binary = "containerd"
        self.id = ""
        self.bundle = ""
        self.socket = ""
        self.debug = False
        self.version = False
        self.action = ""


_STRING_FLAGS = {
    "namespace": "namespace",
    "address": "address",
    "publish-binary": "publish_binary",
    "id": "id",
    "bundle": "bundle",
    "socket": "socket",
}
_BOOL_FLAGS = {"debug": "debug", "v": "version"}


def parse_flags(argv: list[str]) -> Flags:
    """Parse arguments the way Go's ``flag`` package does: ``-f v``,
    ``-f=v``, ``--f v``; booleans as ``-f`` or ``-f=true``; parsing stops at
    the first non-flag argument or ``--``. Raises UsageError."""
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name = arg.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in _BOOL_FLAGS:
            if value is None:
                on = True
            elif value.lower() in ("1", "t", "true"):
                on = True
            elif value.lower() in ("0", "f", "false"):
                on = False
            else:
                raise UsageError(f"invalid boolean value {value!r} for -{name}")
            setattr(flags, _BOOL_FLAGS[name], on)
        elif name in _STRING_FLAGS:
            if value is None:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, _STRING_FLAGS[name], value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    if i < len(argv):
        flags.action = argv[i]
    return flags


def state_dir(address: str) -> str:
    """The shim's state directory, derived from the daemon's socket."""
    path = address.removeprefix("unix://")
    if not path:
        return DEFAULT_STATE_DIR
    return os.path.dirname(os.path.abspath(path))


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, without ``hashlib`` (whose OpenSSL
    binding costs ``start`` ~2 ms to load) where the builtin module exists."""
    try:
        import _sha256
    except ImportError:
        import hashlib

        return hashlib.sha256(data).hexdigest()
    return str(_sha256.sha256(data).hexdigest())


def socket_address(address: str, namespace: str, group: str) -> str:
    """``unix://<state>/s/<sha256(address/namespace/group)>``.

    Falls back to the default state directory when the derived path would
    exceed the unix socket path limit.
    """
    digest = sha256_hex(os.path.join(address, namespace, group).encode())
    path = os.path.join(state_dir(address), "s", digest)
    if len(path) > SOCKET_PATH_MAX:
        path = os.path.join(DEFAULT_STATE_DIR, "s", digest)
    return "unix://" + path


def _write_atomic(path: str, data: str) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path))
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _grouping(id: str, environ: Mapping[str, str] = os.environ) -> str:
    """The server group of container ``id`` (bundle in the cwd): a group
    annotation in its spec, else ``BERTH_SHIM_GROUP``, else the id itself."""
    try:
        with open("config.json", "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise RuntimeError(f"read config.json: {exc}") from None
    # Parsing JSON means importing json (and re): skip it when the spec
    # cannot name a group. Without a backslash no key is escaped, so a label
    # that is absent as bytes is absent from the document.
    if b"\\" in raw or any(label.encode() in raw for label in GROUP_LABELS):
        import json

        try:
            spec = json.loads(raw)
        except ValueError as exc:
            raise RuntimeError(f"read config.json: {exc}") from None
        annotations = (spec.get("annotations") or {}) if isinstance(spec, dict) else {}
        for label in GROUP_LABELS:
            if annotations.get(label):
                return str(annotations[label])
    return environ.get(SHIM_GROUP_ENV) or id


def _unix_socket(kind: int) -> Socket:
    import _socket

    return _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)


# What a connect to a server socket's path finds (see _probe).
_LIVE, _DEAD, _ABSENT = "live", "dead", "absent"


def _probe(path: str, kind: int | None = None) -> str:
    """``_LIVE``, ``_DEAD`` (a file nobody listens on) or ``_ABSENT``, for a
    listener of socket type ``kind`` (``SOCK_STREAM`` when None).

    Only a refused connection proves a socket dead; anything else (a full
    backlog timing out, a permission error) counts as live, because a dead
    socket is removed and removing a live one strands its server.
    """
    import _socket

    s = _unix_socket(_socket.SOCK_STREAM if kind is None else kind)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except FileNotFoundError:
        return _ABSENT
    except ConnectionRefusedError:
        return _DEAD
    except OSError:
        return _LIVE
    finally:
        s.close()
    return _LIVE


def _remove_dead_socket(path: str, kind: int | None = None) -> None:
    """Unlink the socket file at ``path`` if no listener of type ``kind``
    (see :func:`_probe`) is behind it.

    Every remover of dead sockets decides and unlinks under an exclusive
    ``flock`` of the socket directory: without it, two that both found the
    same dead file could unlink it in turn, the second taking the fresh
    socket the first had linked meanwhile. A live socket file is only ever
    removed by its own server. (``fcntl`` costs ~0.4 ms to import, so only
    this rare path pays for it.)
    """
    import fcntl

    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _probe(path, kind) == _DEAD:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def _listen(path: str, *, kind: int | None = None, backlog: int = 128) -> Socket | None:
    """A socket of type ``kind`` (``SOCK_STREAM`` when None) listening at
    ``path``; None when a live server already owns it (grouping: the caller
    joins that server; the zygote: another zygote serves).

    :func:`_listen_private` then :func:`_publish`; ``start`` runs the two
    steps apart, with the server's launch between them. Raises OSError, or
    RuntimeError if the path keeps changing.
    """
    if _probe(path, kind) == _LIVE:
        return None
    s, private = _listen_private(path, kind=kind, backlog=backlog)
    try:
        if _publish(private, path, kind=kind):
            return s
    except BaseException:
        s.close()
        raise
    finally:
        os.unlink(private)
    s.close()
    return None


def _listen_private(
    path: str, *, kind: int | None = None, backlog: int = 128
) -> tuple[Socket, str]:
    """A socket of type ``kind`` (``SOCK_STREAM`` when None) listening under
    a private name beside ``path``: the socket and that name. Raises OSError."""
    import _socket

    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o711, exist_ok=True)
    # Shorter than ``path`` itself (a hash), so within the socket path limit.
    private = os.path.join(directory, f".{os.getpid()}-{os.urandom(4).hex()}")
    s = _unix_socket(_socket.SOCK_STREAM if kind is None else kind)
    try:
        s.bind(private)
        try:
            os.chmod(private, 0o600)
            s.listen(backlog)
        except BaseException:
            os.unlink(private)
            raise
    except BaseException:
        s.close()
        raise
    return s, private


def _publish(private: str, path: str, *, kind: int | None = None) -> bool:
    """Hard-link the listening socket file ``private`` to ``path``: True
    once linked, False when a live server (of socket type ``kind``, see
    :func:`_probe`) owns ``path``; the caller leaves ``private`` for its own
    cleanup.

    Binding under a private name and publishing only a socket that already
    listens (``link`` fails if the name exists) means a socket file at
    ``path`` is always either served or dead, never bound but not yet
    listening. Binding ``path`` directly left that window open: a concurrent
    ``start`` of the same group was refused, took the socket for a dead one,
    replaced it with its own, and the first server, listening under a name
    nobody could reach, never received a ``Shutdown`` (nor its zygote an
    idle moment). Raises OSError, or RuntimeError if the path keeps changing.
    """
    for _ in range(3):
        try:
            os.link(private, path)
            return True
        except FileExistsError:
            pass
        state = _probe(path, kind)
        if state == _LIVE:
            return False
        if state == _DEAD:
            _remove_dead_socket(path, kind)
    raise RuntimeError(f"cannot bind {path}")


def _self_argv() -> list[str]:
    exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if exe and os.access(exe, os.X_OK) and not exe.endswith(".py"):
        return [exe]
    return [sys.executable, "-m", "berth.shim.main"]


def _read_stdin_options() -> bytes:
    try:
        if os.isatty(0):
            return b""
        chunks = []
        while chunk := os.read(0, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""


def _join_cgroup(path: str, pid: int) -> None:
    """Put the server in ``ShimCgroup`` (runtime option), as containerd does."""
    rel = path.strip("/")
    root = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        targets = [os.path.join(root, rel)]
    else:
        targets = []
        for name in sorted(os.listdir(root)):
            d = os.path.join(root, name)
            if name == "unified" or os.path.islink(d):
                continue
            if os.path.exists(os.path.join(d, "cgroup.procs")):
                targets.append(os.path.join(d, rel))
    for t in targets:
        os.makedirs(t, exist_ok=True)
        with open(os.path.join(t, "cgroup.procs"), "w") as f:
            f.write(str(pid))


def _keep_descriptors_to_ourselves() -> None:
    """Make every descriptor above stderr close on exec.

    The zygote or server this command spawns lives on, and ``posix_spawn``
    hands it every inheritable descriptor we have. A caller may leave some
    open by mistake (uvloop's subprocess support passes copies of the
    child's stdio pipes); a long-lived copy of our stdout would keep the
    caller from ever seeing end-of-file on it, and so from ever getting the
    address.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the descriptor listdir itself used, now closed


def cmd_start(flags: Flags) -> int:
    from berth.shim import zygote

    _keep_descriptors_to_ourselves()
    # Options first: malformed ones must fail the start before a server exists.
    shim_cgroup = shim_cgroup_option(_read_stdin_options())
    address = socket_address(flags.address, flags.namespace, _grouping(flags.id))
    path = address.removeprefix("unix://")
    if _probe(path) != _LIVE:
        # The server is launched on a socket nobody else knows of, and the
        # socket is published at the group's path only once nothing can fail
        # any more. So a start that fails after launching its server may
        # kill it: no other start can have joined it.
        sock, private = _listen_private(path)
        pid: int | None = None
        spawned = False
        try:
            _write_atomic("address", address)
            env = dict(os.environ)
            env.setdefault(TTRPC_ADDRESS_ENV, flags.address + ".ttrpc" if flags.address else "")
            env[SHIM_SOCKET_ENV] = path
            if zygote.enabled(env):
                zpath = zygote.zygote_path(flags.address, state_dir(flags.address))
                try:
                    pid = zygote.request_shim(
                        path=zpath,
                        zygote_argv=zygote.zygote_argv(_self_argv(), flags.address),
                        listener=sock,
                        namespace=flags.namespace,
                        id=flags.id,
                        address=flags.address,
                        publish_binary=flags.publish_binary,
                        debug=flags.debug,
                        bundle=os.getcwd(),
                        env=env,
                    )
                except zygote.ZygoteError:
                    # It may have forked the server before failing.
                    _kill_unpublished_servers(sock, spare=_listener_pid(zpath))
                    raise
            if pid is None:
                pid = _spawn_server(flags, sock, env)
                spawned = True
            if shim_cgroup:
                _join_cgroup(shim_cgroup, pid)
            if not _publish(private, path):
                # A concurrent start of the group published first: ours is
                # unreachable, so it goes and this task joins that server.
                _kill_server(sock, pid, spawned)
        except BaseException:
            if pid is not None:
                _kill_server(sock, pid, spawned)
            raise
        finally:
            try:
                os.unlink(private)
            except OSError:
                pass
            sock.close()
    else:
        # Grouping: a live shim already serves this group.
        _write_atomic("address", address)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _kill_server(sock: Socket, pid: int, spawned: bool) -> None:
    """SIGKILL the unpublished server ``pid`` serving ``sock`` and, if it is
    our own child, reap it. SIGKILL, not SIGTERM: a server that stops
    cleanly removes the group's socket file, which may by now be another
    server's. A zygote's child is killed only while it still holds ``sock``
    (the zygote reaps it, so its pid could already name another process)."""
    import signal

    if spawned:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    else:
        _kill_unpublished_servers(sock, only=pid)


def _kill_unpublished_servers(
    sock: Socket, *, only: int | None = None, spare: int | None = None
) -> None:
    """SIGKILL every process but us (and ``spare``) that holds ``sock``, our
    listening socket that was never published, so every holder is a server
    launched on it (or one of its short-lived children). ``only`` limits
    the search to one pid; without it, all of /proc is searched (a failure
    path only). Never raises."""
    import signal

    try:
        target = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
        pids = [only] if only is not None else [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return
    me = os.getpid()
    for pid in pids:
        if pid in (me, spare):
            continue
        try:
            # Through a pidfd: if the pid was reused after the check, the
            # signal cannot reach the newcomer (the pidfd's process is gone).
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _holds(pid, target):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def _holds(pid: int, target: str) -> bool:
    """Whether process ``pid`` has a descriptor open on ``target``
    (``/proc/PID/fd`` link text). Raises OSError if it cannot tell."""
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)) == target:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def _listener_pid(path: str) -> int | None:
    """The pid of the process listening on the unix socket ``path`` (the
    zygote), from the peer credentials of a connection; None if none."""
    import _socket

    s = _unix_socket(_socket.SOCK_SEQPACKET)
    s.settimeout(1.0)
    try:
        s.connect(path)
        creds = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return None
    finally:
        s.close()
    return int.from_bytes(creds[:4], sys.byteorder) or None


def _spawn_server(flags: Flags, sock: Socket, env: dict[str, str]) -> int:
    """Start the server as a fresh interpreter (no zygote)."""
    argv = [*_self_argv(), "-namespace", flags.namespace, "-id", flags.id]
    argv += ["-address", flags.address, "-publish-binary", flags.publish_binary]
    if flags.debug:
        argv.append("-debug")
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    listen_fd = os.dup(sock.fileno())
    try:
        # A new session: the server must outlive its caller and never
        # share its terminal. Its stdio is /dev/null, so a caller reading
        # our output to EOF is not held up by the server.
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, null, 1),
                (os.POSIX_SPAWN_DUP2, null, 2),
                (os.POSIX_SPAWN_DUP2, listen_fd, 3),
            ],
            setsid=True,
        )
    finally:
        os.close(null)
        os.close(listen_fd)


# -- runtime options on stdin, without protobuf ------------------------------------------

# What a ``google.protobuf.Any`` holding runc options may be called
# (containerd.runc.v1.Options and its v1 runtime twin), and the field numbers
# read here: Any.type_url = 1, Any.value = 2, Options.shim_cgroup = 3.
_OPTIONS_TYPES = ("containerd.runc.v1.Options", "containerd.runtime.linux.runc.v1.Options")


class OptionsError(ValueError):
    """The runtime options on stdin are not a well-formed runc ``Options`` Any."""


def _wire_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Split a protobuf message into ``(field, wire type, value)``:
    length-delimited values as bytes, varints and fixed-width values as ints.
    Raises OptionsError on a truncated or malformed message."""
    fields: list[tuple[int, int, bytes | int]] = []
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            if i >= n or shift > 63:
                raise OptionsError("truncated or overlong varint")
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    while i < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OptionsError("field number 0")
        value: bytes | int
        if wire == 0:
            value = varint()
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise OptionsError("truncated length-delimited field")
            value = data[i : i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > n:
                raise OptionsError("truncated fixed-width field")
            value = int.from_bytes(data[i : i + size], "little")
            i += size
        else:
            raise OptionsError(f"unsupported wire type {wire}")
        fields.append((number, wire, value))
    return fields


def _last_bytes(fields: list[tuple[int, int, bytes | int]], number: int) -> bytes:
    """The last occurrence wins, as protobuf decoders merge scalar fields."""
    found = b""
    for num, wire, value in fields:
        if num == number:
            if wire != 2 or not isinstance(value, bytes):
                raise OptionsError(f"field {number} has wire type {wire}")
            found = value
    return found


def shim_cgroup_option(data: bytes) -> str:
    """``ShimCgroup`` from the serialized ``Any`` that ``start`` reads on
    stdin ("" when there are no options or they set none).

    Accepts what :func:`berth.shim.service.parse_runtime_options` accepts
    (the same two type names), but reads only the one field ``start`` acts
    on. Raises OptionsError for another type or a malformed message.
    """
    if not data:
        return ""
    any_fields = _wire_fields(data)
    try:
        type_url = _last_bytes(any_fields, 1).decode()
        cgroup = ""
        if type_url:
            name = type_url.rsplit("/", 1)[-1]
            if name not in _OPTIONS_TYPES:
                raise OptionsError(f"unsupported runtime options type {type_url}")
            options = _wire_fields(_last_bytes(any_fields, 2))
            cgroup = _last_bytes(options, 3).decode()
    except UnicodeDecodeError as exc:
        raise OptionsError(f"invalid runtime options: {exc}") from None
    return cgroup


def cmd_delete(flags: Flags) -> int:
    import asyncio

    from berth.api.runtime.v2.task import shim_pb2

    bundle = flags.bundle or os.getcwd()
    pid, when = asyncio.run(_cleanup(flags, bundle))
    resp = shim_pb2.DeleteResponse(pid=pid, exit_status=128 + SIGKILL)
    resp.exited_at.seconds = int(when)
    resp.exited_at.nanos = int((when - int(when)) * 1e9)
    sys.stdout.buffer.write(resp.SerializeToString())
    sys.stdout.flush()
    return 0


async def _cleanup(flags: Flags, bundle: str) -> tuple[int, float]:
    import time

    from berth.shim import mount as mountlib
    from berth.shim.container import INIT_PID_FILE, RuntimeOptions, default_runc_root
    from berth.shim.reaper import Reaper
    from berth.shim.runc import Runc, RuncError

    opts = RuntimeOptions.read(bundle) or RuntimeOptions()
    root = opts.root or default_runc_root(state_dir(flags.address))
    reaper = Reaper()
    reaper.install()
    try:
        runc = Runc(
            reaper,
            root=os.path.join(root, flags.namespace),
            log=os.path.join(bundle, "log.json"),
            binary=opts.binary_name or "runc",
            systemd_cgroup=opts.systemd_cgroup,
        )
        try:
            await runc.delete(flags.id, force=True)
        except RuncError as exc:
            print(f"failed to remove runc container: {exc}", file=sys.stderr)
    finally:
        reaper.close()
    try:
        mountlib.unmount_rootfs(os.path.join(bundle, "rootfs"))
    except mountlib.MountError as exc:
        print(f"failed to cleanup rootfs mount: {exc}", file=sys.stderr)
    # The dead server's socket would otherwise stay behind.
    try:
        with open(os.path.join(bundle, "address")) as f:
            address = f.read().strip()
        path = address.removeprefix("unix://")
        if path:
            _remove_dead_socket(path)
    except OSError:
        pass
    pid = 0
    try:
        with open(os.path.join(bundle, INIT_PID_FILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        print(f"failed to read init pid file: {exc}", file=sys.stderr)
    return pid, time.time()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = os.path.basename(sys.argv[0]) if sys.argv else "containerd-shim-berth-v2"
    try:
        flags = parse_flags(args)
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if flags.version:
        from berth import __version__ as version

        print(f"{name}:\n  Version:  {version}\n  Revision: berth\n")
        return 0
    if flags.action == "zygote":
        from berth.shim import zygote

        return zygote.run(flags.address, state_dir(flags.address))
    if not flags.namespace:
        print(f"{name}: shim namespace cannot be empty", file=sys.stderr)
        return 1
    try:
        if flags.action == "start":
            code = cmd_start(flags)
            if argv is None:
                # The real command: nothing is left to do, and tearing the
                # interpreter down would cost the caller a few more ms.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return code
        if flags.action == "delete":
            return cmd_delete(flags)
        if flags.action == "":
            from berth.shim.server import serve

            return serve(flags)
        print(f"{name}: unknown action {flags.action!r}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
