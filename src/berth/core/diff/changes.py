"""Comparing two directory trees and writing the difference as an OCI layer tar.

:func:`write_diff` walks ``lower`` and ``upper`` side by side, one directory
at a time in name order (so the tar is deterministic), and emits what an
applier needs to turn ``lower`` into ``upper``:

* paths only in ``upper``, or whose metadata or content differ, as full
  entries (directories before their children, the parents of every entry
  included, as containerd's ``ChangeWriter`` does);
* paths only in ``lower`` as ``.wh.<name>`` whiteouts;
* files sharing an inode within the written set as hard links.

"Differ" follows containerd's continuity ``sameFile`` rule: type and mode,
owner, device number and ``security.capability`` must match; for
non-directories also size and mtime, and when both mtimes lack nanoseconds
(truncated by some tool) the content (or the symlink target) is compared.
Times are written with nanoseconds (a PAX record) when they have any, so
applying the diff reproduces the tree exactly.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import IO

from berth.core.diff.archive import OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX

_CAPABILITY = "security.capability"
_COMPARE_CHUNK = 1 << 16


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name.startswith("trusted.overlay.") or name == OVERLAY_OPAQUE_XATTR:
            continue  # overlayfs bookkeeping, never part of a layer
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    return out


def _capability(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPABILITY, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca = fa.read(_COMPARE_CHUNK)
            if ca != fb.read(_COMPARE_CHUNK):
                return False
            if not ca:
                return True


def same_file(a: str, sa: os.stat_result, b: str, sb: os.stat_result) -> bool:
    """Whether ``b`` is unchanged from ``a`` (their lstat results given)."""
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if (sa.st_mode, sa.st_uid, sa.st_gid, sa.st_rdev) != (
        sb.st_mode,
        sb.st_uid,
        sb.st_gid,
        sb.st_rdev,
    ):
        return False
    if _capability(a) != _capability(b):
        return False
    if stat.S_ISDIR(sa.st_mode):
        return True
    if sa.st_size != sb.st_size:
        return False
    ta, tb = sa.st_mtime_ns, sb.st_mtime_ns
    if ta // 1_000_000_000 != tb // 1_000_000_000:
        return False
    if ta % 1_000_000_000 == 0 and tb % 1_000_000_000 == 0:
        if stat.S_ISLNK(sa.st_mode):
            return os.readlink(a) == os.readlink(b)
        if sa.st_size == 0 or not stat.S_ISREG(sa.st_mode):
            return True
        return _same_content(a, b)
    return ta == tb


def _listing(path: str) -> dict[str, os.stat_result]:
    try:
        with os.scandir(path) as it:
            return {e.name: e.stat(follow_symlinks=False) for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return {}


class _Writer:
    def __init__(self, tf: tarfile.TarFile, upper: str) -> None:
        self.tf = tf
        self.upper = upper
        self.written_dirs: set[str] = {""}
        self.inodes: dict[tuple[int, int], str] = {}

    def _parents(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent in self.written_dirs:
            return
        self._parents(parent)
        path = self.upper + "/" + parent
        self._entry(parent, path, os.lstat(path))

    def whiteout(self, parent: str, name: str) -> None:
        rel = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
        self._parents(rel)
        info = tarfile.TarInfo(rel)
        info.type = tarfile.REGTYPE
        info.mode = 0o644
        info.uname = info.gname = ""
        self.tf.addfile(info)

    def add(self, rel: str, st: os.stat_result) -> None:
        self._parents(rel)
        self._entry(rel, self.upper + "/" + rel, st)

    def _entry(self, rel: str, path: str, st: os.stat_result) -> None:
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = st.st_mtime_ns // 1_000_000_000
        pax: dict[str, str] = {}
        if st.st_mtime_ns % 1_000_000_000:
            sec, ns = divmod(st.st_mtime_ns, 1_000_000_000)
            pax["mtime"] = f"{sec}.{ns:09d}"
        for xname, value in sorted(_xattrs(path).items()):
            pax["SCHILY.xattr." + xname] = value.decode("utf-8", "surrogateescape")
        mode = st.st_mode
        data: IO[bytes] | None = None
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            self.written_dirs.add(rel)
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            first = self.inodes.get(key) if st.st_nlink > 1 else None
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
            else:
                if st.st_nlink > 1:
                    self.inodes[key] = rel
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                data = open(path, "rb")
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets cannot be carried in a tar
        info.pax_headers = pax
        try:
            self.tf.addfile(info, data)
        finally:
            if data is not None:
                data.close()


def _walk(w: _Writer, lower: str, upper: str, rel: str, lower_is_dir: bool) -> None:
    """Emit the changes below directory ``rel`` (present in upper)."""
    up = _listing(upper + ("/" + rel if rel else ""))
    low = _listing(lower + ("/" + rel if rel else "")) if lower_is_dir else {}
    for name in sorted(up.keys() | low.keys()):
        child = f"{rel}/{name}" if rel else name
        su = up.get(name)
        sl = low.get(name)
        if su is None:
            w.whiteout(rel, name)
            continue
        upath = upper + "/" + child
        if sl is None or not same_file(lower + "/" + child, sl, upath, su):
            w.add(child, su)
        if stat.S_ISDIR(su.st_mode):
            _walk(w, lower, upper, child, sl is not None and stat.S_ISDIR(sl.st_mode))


def write_diff(
    lower: str | os.PathLike[str], upper: str | os.PathLike[str], out: IO[bytes]
) -> None:
    """Write the OCI layer tar turning ``lower`` into ``upper`` to ``out``.

    Blocking: walks both trees and reads changed files. Raises OSError for
    unreadable trees.
    """
    lo, up = os.path.realpath(lower), os.path.realpath(upper)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _walk(_Writer(tf, up), lo, up, "", True)


def iter_changes(lower: str, upper: str) -> Iterator[str]:
    """Names of the entries :func:`write_diff` would emit (for tests and tools)."""
    import io

    buf = io.BytesIO()
    write_diff(lower, upper, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r|") as tf:
        for m in tf:
            yield m.name
