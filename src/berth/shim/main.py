"""``containerd-shim-berth-v2``: the command line containerd runs.

Owns the shim binary's contract with its caller, as containerd 1.6 defines
it (``runtime/v2/shim``):

* Go-style single-dash flags: ``-namespace``, ``-address``,
  ``-publish-binary``, ``-id``, ``-bundle``, ``-socket``, ``-debug``, ``-v``;
  then an action;
* ``start`` (cwd is the bundle; runtime options may arrive on stdin as a
  serialized ``Any``): bind the shim socket, write the bundle's ``address``
  file, have the long-running server forked by the daemon's zygote
  (:mod:`berth.shim.zygote`, started on first use) or, failing that, spawn
  it in its own session with the listening socket as fd 3; print
  ``unix://...`` and exit. Containers whose spec carries the
  ``io.containerd.runc.v2.group`` (or CRI sandbox) annotation share one
  server; so do those started with the same ``BERTH_SHIM_GROUP`` in the
  environment (berthd's ``shim_group`` setting), which lets the daemon group
  containers without writing to their specs;
* ``delete``: clean up after a dead server (``runc delete --force``, unmount
  the rootfs) and print a ``DeleteResponse`` (exit status 128+SIGKILL);
* no action: serve ``containerd.task.v2.Task`` on fd 3 (or ``-socket``);
* ``zygote`` (Berth's own, run only by ``start``): the per-daemon process
  that forks servers.

Socket addresses: containerd puts its shims' sockets in ``<state>/s/<sha256>``
with the hash over ``<address>/<namespace>/<id>``. Berth derives the state
directory from ``-address`` (its parent directory: ``/run/berth`` for
``/run/berth/berth.sock``), so isolated daemons keep isolated shims.

The module keeps its top-level imports to the standard library: ``start`` and
``delete`` are short-lived and should not pay for protobuf, and the server
imports the service lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Mapping

__all__ = ["Flags", "main", "parse_flags", "socket_address"]

DEFAULT_STATE_DIR = "/run/berth"
SOCKET_PATH_MAX = 107
GROUP_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS"
SHIM_GROUP_ENV = "BERTH_SHIM_GROUP"
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


def socket_address(address: str, namespace: str, group: str) -> str:
    """``unix://<state>/s/<sha256(address/namespace/group)>``.

    Falls back to the default state directory when the derived path would
    exceed the unix socket path limit.
    """
    digest = hashlib.sha256(os.path.join(address, namespace, group).encode()).hexdigest()
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
        with open("config.json") as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"read config.json: {exc}") from None
    annotations = spec.get("annotations") or {}
    for label in GROUP_LABELS:
        if annotations.get(label):
            return str(annotations[label])
    return environ.get(SHIM_GROUP_ENV) or id


def _can_connect(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def _listen(path: str) -> socket.socket | None:
    """Bind and listen on ``path``; None when a live server already owns it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
        except OSError as exc:
            s.close()
            if exc.errno != 98:  # EADDRINUSE
                raise
            if _can_connect(path):
                return None
            os.unlink(path)
            continue
        os.chmod(path, 0o600)
        s.listen(128)
        return s
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
        return sys.stdin.buffer.read()
    except (OSError, ValueError):
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


def cmd_start(flags: Flags) -> int:
    from berth.shim import zygote

    address = socket_address(flags.address, flags.namespace, _grouping(flags.id))
    path = address.removeprefix("unix://")
    sock = _listen(path)
    if sock is None:
        # Grouping: a live shim already serves this group.
        _write_atomic("address", address)
        sys.stdout.write(address)
        return 0
    try:
        _write_atomic("address", address)
        env = dict(os.environ)
        env.setdefault(TTRPC_ADDRESS_ENV, flags.address + ".ttrpc" if flags.address else "")
        pid: int | None = None
        if zygote.enabled(env):
            pid = zygote.request_shim(
                path=zygote.zygote_path(flags.address, state_dir(flags.address)),
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
        if pid is None:
            pid = _spawn_server(flags, sock, env)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    sock.close()
    data = _read_stdin_options()
    if data:
        _apply_start_options(data, pid)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _spawn_server(flags: Flags, sock: socket.socket, env: dict[str, str]) -> int:
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


def _apply_start_options(data: bytes, pid: int) -> None:
    from google.protobuf import any_pb2

    from berth.shim.service import parse_runtime_options

    opts = parse_runtime_options(any_pb2.Any.FromString(data))
    if opts.shim_cgroup:
        _join_cgroup(opts.shim_cgroup, pid)


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
        mountlib.unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as exc:
        print(f"failed to cleanup rootfs mount: {exc}", file=sys.stderr)
    # The dead server's socket would otherwise stay behind.
    try:
        with open(os.path.join(bundle, "address")) as f:
            address = f.read().strip()
        path = address.removeprefix("unix://")
        if path and not _can_connect(path):
            os.unlink(path)
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
            return cmd_start(flags)
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
