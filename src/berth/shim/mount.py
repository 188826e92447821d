"""Mounting a task's rootfs with mount(2), and taking it down again.

Owns the translation of containerd mount records (type, source, options as
``ctr``/snapshotters send them: ``ro``, ``bind``, ``lowerdir=...``) into
mount flags plus filesystem data, the read-only bind remount dance, and
unmounting everything stacked on a target. Calls go straight to libc through
ctypes: no ``mount`` binary, no shell.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MountSpec", "mount", "parse_options", "unmount_all"]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# option -> (clear?, flag); "clear" options remove the flag again.
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

_PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


@dataclass(frozen=True, slots=True)
class MountSpec:
    type: str
    source: str
    options: Sequence[str] = field(default_factory=tuple)


def parse_options(options: Sequence[str]) -> tuple[int, int, str]:
    """Split mount options into (flags, propagation flags, data string)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        known = _FLAGS.get(opt)
        if known is not None:
            clear, flag = known
            if clear:
                flags &= ~flag
            else:
                flags |= flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = lib
    return _libc


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _lib().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def mount(spec: MountSpec, target: str) -> None:
    """Mount ``spec`` on ``target``. Blocking; raises ``OSError``."""
    flags, propagation, data = parse_options(spec.options)
    fstype = spec.type
    if flags & MS_BIND:
        fstype = ""
    # A bind mount ignores MS_RDONLY on the first call: remount to apply it.
    _sys_mount(spec.source, target, fstype, flags & ~MS_RDONLY if flags & MS_BIND else flags, data)
    if flags & MS_BIND and flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC):
        _sys_mount("", target, "", flags | MS_REMOUNT, "")
    if propagation:
        _sys_mount("", target, "", propagation, "")


def _is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    want = os.path.realpath(path).encode()
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4 and _unescape(fields[4]) == want:
            return True
    return False


def _unescape(field: bytes) -> bytes:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def unmount_all(target: str, *, attempts: int = 50) -> None:
    """Unmount every mount stacked on ``target`` (no error when none).

    Busy mounts are retried briefly, then detached lazily, so a stray open
    file cannot keep a container's rootfs mounted forever. Blocking.
    """
    if not target or not os.path.isdir(target):
        return
    lib = _lib()
    tries = 0
    while True:
        rc = lib.umount2(target.encode(), 0)
        if rc == 0:
            continue  # maybe more stacked on the same target
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            # Not a mount point (any more).
            return
        if err == errno.ENOENT:
            return
        if err == errno.EBUSY and tries < attempts:
            tries += 1
            time.sleep(0.01)
            continue
        if err == errno.EBUSY and _is_mountpoint(target):
            if lib.umount2(target.encode(), MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)
