"""Task bundles on disk: the directory a shim and runc work in.

A bundle lives at ``<state>/<namespace>/<id>`` (transient: it must not
survive a reboot, as the processes it describes do not) and holds
``config.json`` (the container's OCI spec), the ``rootfs`` mount point, and a
``work`` symlink to ``<root>/<namespace>/<id>``, a persistent scratch
directory the shim may use (checkpoints, logs). The shim adds ``address``,
``init.pid``, ``log`` and friends; the manager adds ``shim-binary-path`` so a
restarted daemon knows which binary to ask for cleanup.

Deleting is careful about one thing above all: the rootfs is unmounted and
removed with ``rmdir`` *before* anything is removed recursively, so a mount
that could not be undone never has the container's files deleted through it.
Directories are renamed to a hidden name first and then removed, so a crash
half-way through leaves a dot-directory, never a half-deleted bundle that
restore would mistake for a live one.

Every function here blocks (file system calls); the manager runs them in a
worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from berth import errdefs, identifiers
from berth.core import mount as mountlib

__all__ = ["CONFIG_FILENAME", "SHIM_BINARY_FILE", "Bundle", "load_bundle", "new_bundle"]

CONFIG_FILENAME = "config.json"
SHIM_BINARY_FILE = "shim-binary-path"
ADDRESS_FILE = "address"
LOG_FIFO = "log"


@dataclass(frozen=True)
class Bundle:
    """A task's bundle directory: ``path`` is ``<state>/<namespace>/<id>``."""

    id: str
    namespace: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def log_fifo(self) -> Path:
        return self.path / LOG_FIFO

    def read_address(self) -> str:
        """The shim socket address the shim wrote; OSError if there is none."""
        return (self.path / ADDRESS_FILE).read_text().strip()

    def write_shim_binary(self, binary: str) -> None:
        (self.path / SHIM_BINARY_FILE).write_text(binary)
        os.chmod(self.path / SHIM_BINARY_FILE, 0o600)

    def read_shim_binary(self) -> str:
        """The binary that started this bundle's shim, or "" if unrecorded."""
        try:
            return (self.path / SHIM_BINARY_FILE).read_text().strip()
        except FileNotFoundError:
            return ""

    def delete(self) -> None:
        """Unmount the rootfs and remove the bundle and its work directory.

        Raises ``errdefs.BerthError`` when the rootfs cannot be unmounted or
        removed (the bundle is then left in place, intact).
        """
        try:
            work: str | None = os.readlink(self.path / "work")
        except OSError:
            work = None
        rootfs = self.rootfs
        try:
            mountlib.unmount_all(rootfs)
        except mountlib.MountError as exc:
            raise errdefs.BerthError(f"unmount rootfs {rootfs}: {exc}") from None
        try:
            rootfs.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise errdefs.BerthError(f"failed to remove bundle rootfs: {exc}") from None
        _atomic_delete(self.path)
        if work is not None:
            _atomic_delete(Path(work))


def _atomic_delete(path: Path) -> None:
    hidden = path.parent / f".{path.name}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _remapped_gid(spec: bytes) -> int:
    """The host gid container root maps to, 0 without a user namespace."""
    try:
        doc = json.loads(spec or b"{}")
    except ValueError:
        return 0
    linux = doc.get("linux") if isinstance(doc, dict) else None
    for m in (linux or {}).get("gidMappings") or ():
        if isinstance(m, dict) and m.get("containerID") == 0:
            return int(m.get("hostID", 0))
    return 0


def new_bundle(state: Path, root: Path, namespace: str, id: str, spec: bytes) -> Bundle:
    """Create the bundle and work directory for task ``id`` with ``spec`` as config.json.

    Raises InvalidArgument for a bad id, AlreadyExists when the bundle is
    already there. Anything made is removed again on failure.
    """
    try:
        identifiers.validate(id)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"invalid task id {id}: {exc}") from None
    bundle = Bundle(id=id, namespace=namespace, path=state / namespace / id)
    work = root / namespace / id
    made: list[Path] = []
    try:
        bundle.path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            bundle.path.mkdir(mode=0o700)
        except FileExistsError:
            raise errdefs.AlreadyExists(f"bundle for task {id}: already exists") from None
        made.append(bundle.path)
        gid = _remapped_gid(spec)
        if gid:
            # The remapped root must be able to traverse into its rootfs.
            os.chown(bundle.path, -1, gid)
            os.chmod(bundle.path, 0o710)
        work.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        bundle.rootfs.mkdir(mode=0o711)
        if work.exists():
            # Left over from a task that was never cleaned up: start afresh.
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o711)
        made.append(work)
        os.symlink(work, bundle.path / "work")
        fd = os.open(bundle.path / CONFIG_FILENAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(spec)
    except BaseException:
        for p in made:
            with contextlib.suppress(OSError):
                shutil.rmtree(p)
        raise
    return bundle


def load_bundle(state: Path, namespace: str, id: str) -> Bundle:
    return Bundle(id=id, namespace=namespace, path=state / namespace / id)
