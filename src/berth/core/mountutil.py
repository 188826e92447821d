"""Daemon-side helpers over mounts: temporary mounts, read-only forms, and
this process's mount table.

berthd (the applier and differ, ``images mount``), the ``berth`` CLI and the
tests mount snapshots on scratch directories and look for leftover mounts;
the shim does neither. These helpers live apart from :mod:`berth.core.mount`,
which ``containerd-shim-berth-v2`` imports for a task's rootfs, so that every
shim carries only the code that mounts and unmounts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from berth.core.mount import Mount, mount_all, unmount_all

__all__ = ["mount_points", "readonly", "with_temp_mount"]

log = logging.getLogger("berth.mount")


def readonly(mounts: Sequence[Mount]) -> list[Mount]:
    """Read-only versions of ``mounts``.

    An overlay loses its upper and work dirs, and the upper joins the front of
    the lowerdir chain; every other mount gets ``ro`` instead of ``rw``.
    """
    out: list[Mount] = []
    for m in mounts:
        if m.type == "overlay":
            upper = ""
            opts: list[str] = []
            for o in m.options:
                if o.startswith("upperdir="):
                    upper = o[len("upperdir=") :]
                elif not o.startswith("workdir="):
                    opts.append(o)
            if upper:
                opts = [
                    "lowerdir=" + upper + ":" + o[len("lowerdir=") :]
                    if o.startswith("lowerdir=")
                    else o
                    for o in opts
                ]
            out.append(Mount(m.type, m.source, opts, m.target))
        else:
            opts = [o for o in m.options if o not in ("rw", "ro")]
            out.append(Mount(m.type, m.source, [*opts, "ro"], m.target))
    return out


@contextlib.contextmanager
def with_temp_mount(
    mounts: Sequence[Mount],
    *,
    read_only: bool = False,
    tempdir: str | os.PathLike[str] | None = None,
) -> Iterator[Path]:
    """Mount ``mounts`` on a fresh temporary directory and yield it.

    On exit everything is unmounted (with EBUSY retries) and the directory is
    removed with ``rmdir``, never recursively: if an unmount failed, deleting
    recursively would delete the snapshot's data through the mount. Blocking:
    call from a worker thread. Raises :class:`berth.core.mount.MountError`.
    """
    root = Path(tempfile.mkdtemp(prefix="berth-mount-", dir=tempdir))
    try:
        try:
            mount_all(readonly(mounts) if read_only else mounts, root)
            yield root
        finally:
            unmount_all(root)
    finally:
        try:
            root.rmdir()
        except OSError as exc:
            log.error("failed to remove temporary mount dir %s: %s", root, exc)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out = bytearray()
    i = 0
    raw = field.encode()
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def mount_points(prefix: str | os.PathLike[str] | None = None) -> list[str]:
    """Mount points of this process's mount namespace, optionally under ``prefix``.

    Read from ``/proc/self/mountinfo``; used for leak checks and cleanup.
    """
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [_unescape(line.split(" ", 5)[4]) for line in f if line.strip()]
    if prefix is None:
        return points
    base = os.path.realpath(os.fspath(prefix)).rstrip("/")
    return [p for p in points if p == base or p.startswith(base + "/")]
