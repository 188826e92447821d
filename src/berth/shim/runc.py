"""The runc command-line driver.

Owns how the shim invokes runc: global flags (``--root``, ``--log``,
``--log-format json``, ``--systemd-cgroup``), one method per runc command, and
turning a failed invocation into an error that carries runc's own words.

runc reports failures in its JSON log (the last ``"level":"error"`` line) and,
for most commands, on stderr too. Like containerd, errors are reported from the
log when it has one and from the captured output otherwise. Every invocation
goes through the shim's :class:`~berth.shim.reaper.Reaper`, which is the only
code allowed to wait for children.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs
from berth.shim.reaper import Reaper

__all__ = ["Runc", "RuncError", "Stdio", "last_error"]

DEFAULT_BINARY = "runc"


class RuncError(errdefs.BerthError):
    """runc exited non-zero. ``output`` holds what it printed, ``log_error``
    the last error line of its JSON log (empty when there was none)."""

    def __init__(self, command: str, status: int, output: str, log_error: str) -> None:
        self.command = command
        self.status = status
        self.output = output.strip()
        self.log_error = log_error
        detail = self.output or log_error
        message = f"runc {command} failed: exit status {status}"
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(slots=True)
class Stdio:
    """Descriptors a runc invocation hands to the container process."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


def last_error(log_path: str) -> str:
    """The message of the last ``error`` record in runc's JSON log, or ''."""
    try:
        with open(log_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ""
    message = ""
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") == "error":
            message = str(record.get("msg", "")).strip()
    return message


async def _read_all(fd: int) -> bytes:
    """Read a non-blocking pipe to EOF without a thread."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if not done.done():
                    done.set_exception(exc)
                loop.remove_reader(fd)
                return
            if not data:
                loop.remove_reader(fd)
                if not done.done():
                    done.set_result(None)
                return
            chunks.append(data)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


@dataclass(slots=True)
class Runc:
    """runc with one state root and one log file.

    ``root`` is runc's ``--root`` (containerd uses ``<Root>/<namespace>``);
    ``log`` is usually ``<bundle>/log.json``.
    """

    reaper: Reaper
    root: str
    log: str
    binary: str = DEFAULT_BINARY
    systemd_cgroup: bool = False
    criu: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def _argv(self, args: Sequence[str]) -> list[str]:
        argv = [self.binary or DEFAULT_BINARY, "--root", self.root]
        argv += ["--log", self.log, "--log-format", "json"]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        if self.criu:
            argv += ["--criu", self.criu]
        argv.extend(args)
        return argv

    async def run(
        self,
        *args: str,
        stdio: Stdio | None = None,
        input: bytes | None = None,
    ) -> bytes:
        """Run ``runc <args>`` and return its stdout.

        With ``stdio`` the descriptors go to runc (and so to the container)
        and nothing is captured; otherwise stdout and stderr are captured
        (and ``input`` is fed to stdin). Raises :class:`RuncError`.
        """
        argv = self._argv(args)
        command = args[0] if args else ""
        out_r = out_w = in_r = -1
        try:
            if stdio is None:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                if input is not None:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    try:
                        # Resource documents are small: the pipe buffer holds them.
                        os.write(in_w, input)
                    finally:
                        os.close(in_w)
                try:
                    _, fut = self.reaper.spawn(
                        argv,
                        stdin=in_r if in_r >= 0 else None,
                        stdout=out_w,
                        stderr=out_w,
                        env=self._env(),
                    )
                except OSError as exc:
                    raise errdefs.FailedPrecondition(
                        f"cannot run {argv[0]}: {exc.strerror}"
                    ) from None
                os.close(out_w)
                out_w = -1
                output = await _read_all(out_r)
            else:
                try:
                    _, fut = self.reaper.spawn(
                        argv,
                        stdin=stdio.stdin,
                        stdout=stdio.stdout,
                        stderr=stdio.stderr,
                        env=self._env(),
                    )
                except OSError as exc:
                    raise errdefs.FailedPrecondition(
                        f"cannot run {argv[0]}: {exc.strerror}"
                    ) from None
                output = b""
            assert fut is not None
            status = await self.reaper.wait(fut)
        finally:
            for fd in (out_r, out_w, in_r):
                if fd >= 0:
                    os.close(fd)
        if status != 0:
            text = output.decode(errors="replace")
            raise RuncError(command, status, _strip_log_lines(text), last_error(self.log))
        return output

    def _env(self) -> dict[str, str] | None:
        if not self.extra_env:
            return None
        env = dict(os.environ)
        env.update(self.extra_env)
        return env

    # -- commands --------------------------------------------------------------

    async def create(
        self,
        id: str,
        bundle: str,
        *,
        pid_file: str,
        stdio: Stdio,
        console_socket: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
    ) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        await self.run(*args, id, stdio=stdio)

    async def start(self, id: str) -> None:
        await self.run("start", id)

    async def exec(
        self,
        id: str,
        process_file: str,
        *,
        pid_file: str,
        stdio: Stdio,
        console_socket: str | None = None,
    ) -> None:
        args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self.run(*args, id, stdio=stdio)

    async def kill(self, id: str, sig: int, *, all: bool = False) -> None:
        args = ["kill"]
        if all:
            args.append("--all")
        await self.run(*args, id, str(sig))

    async def delete(self, id: str, *, force: bool = False) -> None:
        args = ["delete"]
        if force:
            args.append("--force")
        await self.run(*args, id)

    async def state(self, id: str) -> dict[str, Any]:
        out = await self.run("state", id)
        data = json.loads(out)
        if not isinstance(data, dict):
            raise errdefs.BerthError(f"runc state: unexpected output {out[:200]!r}")
        return data

    async def ps(self, id: str) -> list[int]:
        out = await self.run("ps", "--format", "json", id)
        data = json.loads(out or b"null")
        return [int(p) for p in data or []]

    async def pause(self, id: str) -> None:
        await self.run("pause", id)

    async def resume(self, id: str) -> None:
        await self.run("resume", id)

    async def update(self, id: str, resources: bytes) -> None:
        await self.run("update", "--resources", "-", id, input=resources)

    async def checkpoint(
        self,
        id: str,
        *,
        image_path: str,
        work_path: str,
        leave_running: bool,
        open_tcp: bool = False,
        external_unix_sockets: bool = False,
        terminal: bool = False,
        file_locks: bool = False,
        empty_namespaces: Sequence[str] = (),
    ) -> None:
        args = ["checkpoint", "--image-path", image_path, "--work-path", work_path]
        if leave_running:
            args.append("--leave-running")
        if open_tcp:
            args.append("--tcp-established")
        if external_unix_sockets:
            args.append("--ext-unix-sk")
        if terminal:
            args.append("--shell-job")
        if file_locks:
            args.append("--file-locks")
        for ns in empty_namespaces:
            args += ["--empty-ns", ns]
        await self.run(*args, id)

    async def restore(
        self,
        id: str,
        bundle: str,
        *,
        image_path: str,
        work_path: str,
        pid_file: str,
        stdio: Stdio,
        console_socket: str | None = None,
        parent_path: str = "",
        no_pivot: bool = False,
    ) -> None:
        args = ["restore", "--detach", "--bundle", bundle, "--pid-file", pid_file]
        args += ["--image-path", image_path, "--work-path", work_path]
        if parent_path:
            args += ["--parent-path", parent_path]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        await self.run(*args, id, stdio=stdio)


def _strip_log_lines(text: str) -> str:
    """runc echoes its JSON log records on stderr in some versions; keep the
    human part, and the message of a JSON error record."""
    kept: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                record = json.loads(s)
            except ValueError:
                kept.append(s)
                continue
            if isinstance(record, dict) and record.get("level") == "error":
                kept.append(str(record.get("msg", "")).strip())
            continue
        if s:
            kept.append(s)
    return "\n".join(kept)
