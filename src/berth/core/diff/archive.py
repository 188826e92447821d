"""Applying an OCI layer tar to a directory: securely, and with file creation in parallel.

:func:`apply_tar` reads an *uncompressed* tar stream and makes the changes it
describes under ``root``, following the OCI image-spec changeset rules as
containerd's ``archive.Apply`` does: entries replace what is at their path
(directories merge), ``.wh.<name>`` deletes ``<name>``, ``.wh..wh..opq`` hides
whatever lower layers had in its directory, ownership, modes (setuid/setgid
included), extended attributes (``security.capability`` included), hard links,
device nodes and fifos are restored, and directory mtimes are set last.

Design note: where the time goes
--------------------------------
On the machines Berth targets, creating a file costs about half a millisecond
of kernel time, so a Debian base layer (~6,700 entries) is seconds of
``openat(O_CREAT)``, while inflating and hashing it is a fraction of that.
The extractor therefore splits the work:

* the calling thread decompresses nothing itself (the caller hands it a
  stream that inflates on its own thread, see ``berth.core.images.compression``
  and ``berth.core.diff.walking``), parses tar headers in order (reading the
  stream in large blocks, see :class:`_TarSource`), resolves every path, and
  performs the operations that others depend on: ``mkdir`` (children need
  their parent), deletions, whiteouts, hard links, device nodes;
* regular files up to :attr:`ApplyOptions.small_file_limit` and symlinks (the
  bulk of any layer) are handed, with their data already read, to a pool of
  worker threads which create, write and stamp them (an owner or mode that
  creation already got right is not set again: see :func:`_finish_new`).
  Those calls release the GIL, so several creations are in flight at once
  while the parser moves on. Bytes held for workers are bounded by
  :attr:`ApplyOptions.max_inflight_bytes`; bigger files are streamed to disk
  by the parser in chunks (holes kept sparse), so memory stays bounded
  whatever the layer holds.

Ordering rules that make the parallelism invisible: an operation on a path
first waits for any queued operation on that same path (a duplicate entry), a
deletion or replacement waits for queued operations *under* the path, a hard
link waits for its target, a path component that is still queued (a symlink
being created) is waited for before it is resolved, and directory times are
applied after every worker has finished.

Security
--------
No entry may touch anything outside ``root``:

* names are cleaned; a ``..`` that would climb above the root is rejected
  (InvalidArgument naming the entry) rather than clamped, since no genuine
  layer contains one; a leading ``/`` is dropped, as containerd does;
* every parent component is resolved *inside* the root, component by
  component, with ``lstat``/``readlink``; symlinks (including ones this layer
  made a moment ago) are followed with chroot semantics (absolute targets
  restart at the root, ``..`` stops at it), so a link to ``/etc`` means the
  layer's own ``/etc``, never the host's; the final component is never
  followed (``O_NOFOLLOW``, ``lchown``, ``lutimes``);
* hard link targets are resolved the same way and must exist inside the root;
* ``.wh.``, ``.wh..`` and ``.wh...`` are rejected; device nodes are rejected
  unless allowed; ``trusted.overlay.*`` attributes in a layer are dropped
  (a layer must not forge overlayfs metadata such as redirects).

Overlay upper directories
-------------------------
With :attr:`Whiteouts.OVERLAY` the root is an overlayfs *upper* directory and
``lowers`` are the lower layers, nearest first (containerd applies to the
upper directly in this case). Whiteouts become 0/0 character devices and
opaque markers the ``trusted.overlay.opaque=y`` attribute. Paths are resolved
in the *merged* view: a parent missing from the upper directory is looked up
in the lowers, so a lower-layer symlink is followed (``lib -> usr/lib`` keeps
working) and a lower directory is copied up with its owner, mode, times and
attributes (otherwise the fresh upper directory would mask them).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, cast

from berth import errdefs

log = logging.getLogger("berth.diff")

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_PAX_XATTR = "SCHILY.xattr."
_MAX_SYMLINKS = 40  # Linux's own limit on links followed in one lookup
_CHUNK = 1 << 20
_HOLE_BLOCK = 64 * 1024
_ZERO_BLOCK = bytes(_HOLE_BLOCK)
_TASK_COST = 32 * 1024
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# utimensat takes 64-bit nanoseconds; tar times beyond that range are clamped.
_MAX_NS = (1 << 63) - 1
_MIN_NS = -(1 << 63)


class Whiteouts(enum.Enum):
    """How whiteout entries are carried out."""

    #: delete the named paths (a plain directory or a mounted snapshot)
    DELETE = "delete"
    #: write overlayfs whiteouts into an upper directory
    OVERLAY = "overlay"


@dataclass(frozen=True)
class ApplyOptions:
    """How :func:`apply_tar` applies a layer.

    ``lowers`` only matter with :attr:`Whiteouts.OVERLAY`. ``workers`` of 0
    makes every change on the calling thread (useful to compare).
    """

    whiteouts: Whiteouts = Whiteouts.DELETE
    lowers: tuple[str, ...] = ()
    allow_devices: bool = True
    workers: int = 4
    small_file_limit: int = 1 << 20
    max_inflight_bytes: int = 64 << 20


@dataclass
class ApplyStats:
    """What an apply did: tar entries read, and the sum of their sizes."""

    entries: int = 0
    size: int = 0


# ---------------------------------------------------------------------------
# Pure helpers (the fuzzable part)


def clean_name(name: str, what: str = "entry") -> list[str]:
    """The components of tar name ``name`` relative to the root.

    Empty and ``.`` components and a leading ``/`` are dropped; ``..`` pops a
    component. Raises InvalidArgument when ``..`` would leave the root. An
    empty result means the root itself.
    """
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise errdefs.InvalidArgument(
                    f"layer {what} {name!r}: path escapes the root: invalid argument"
                )
            out.pop()
            continue
        out.append(part)
    return out


def whiteout_target(base: str, name: str) -> str:
    """The name a ``.wh.`` entry deletes. Raises InvalidArgument for ``.wh.``,
    ``.wh..`` and ``.wh...``, which would delete the directory or its parent."""
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise errdefs.InvalidArgument(
            f"layer entry {name!r}: invalid whiteout name {base!r}: invalid argument"
        )
    return target


def pax_time_ns(value: str | None, fallback: float) -> int:
    """Nanoseconds from a PAX time record (``"1700000000.123456789"``), exactly;
    ``fallback`` (seconds) when there is no record or it is malformed."""
    if value:
        text = value.strip()
        neg = text.startswith("-")
        if neg:
            text = text[1:]
        sec, _, frac = text.partition(".")
        if sec.isdigit() and (not frac or frac.isdigit()):
            ns = int(sec) * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
            return _clamp_ns(-ns if neg else ns)
    return _clamp_ns(int(fallback * 1_000_000_000))


def _clamp_ns(ns: int) -> int:
    return max(_MIN_NS, min(_MAX_NS, ns))


def layer_xattrs(pax: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Extended attributes a tar entry carries (``SCHILY.xattr.*``), minus
    ``trusted.overlay.*`` which no layer may set."""
    out: list[tuple[str, bytes]] = []
    for key, value in pax.items():
        if key.startswith(_PAX_XATTR):
            name = key[len(_PAX_XATTR) :]
            if not name or name.startswith("trusted.overlay."):
                continue
            # tarfile decodes PAX values as UTF-8, falling back to
            # surrogateescape, so this restores the original bytes.
            out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


# ---------------------------------------------------------------------------
# Metadata of one entry, detached from tarfile so workers can use it


@dataclass(frozen=True, slots=True)
class _Meta:
    name: str
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    atime: int
    mtime: int
    xattrs: tuple[tuple[str, bytes], ...]


def _meta(m: tarfile.TarInfo) -> _Meta:
    mtime = pax_time_ns(m.pax_headers.get("mtime"), m.mtime)
    atime = pax_time_ns(m.pax_headers.get("atime"), 0) if "atime" in m.pax_headers else mtime
    # containerd sets atime to the later of the two.
    return _Meta(
        name=m.name,
        mode=m.mode & 0o7777,
        uid=m.uid,
        gid=m.gid,
        atime=max(atime, mtime),
        mtime=mtime,
        xattrs=tuple(layer_xattrs(m.pax_headers)),
    )


def _set_xattrs(target: int | str, meta: _Meta, *, is_link: bool = False) -> None:
    for key, value in meta.xattrs:
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                log.warning("ignored xattr %s on %r: not supported here", key, meta.name)
                continue
            if exc.errno == errno.EPERM and key.startswith("user.") and is_link:
                # user.* attributes exist only on files and directories.
                log.warning("ignored xattr %s on %r", key, meta.name)
                continue
            raise


def _finish_fd(fd: int, meta: _Meta) -> None:
    # chown first: it clears setuid/setgid and security.capability, which
    # the chmod and setxattr after it then restore.
    os.fchown(fd, meta.uid, meta.gid)
    _set_xattrs(fd, meta)
    os.fchmod(fd, meta.mode)
    os.utime(fd, ns=(meta.atime, meta.mtime))


def _finish_path(path: str, meta: _Meta, *, symlink: bool = False) -> None:
    os.lchown(path, meta.uid, meta.gid)
    _set_xattrs(path, meta, is_link=symlink)
    if not symlink:
        os.chmod(path, meta.mode, follow_symlinks=False)
    os.utime(path, ns=(meta.atime, meta.mtime), follow_symlinks=False)


# Objects this layer has just created: most already have the owner (root,
# who runs us) and mode (created with it) the entry asks for. Every chown or
# chmod dirties the inode and goes through the journal, a good share of a
# file's cost here, while a stat does not; so compare first. Entries with
# setuid/setgid/sticky bits take the full path: chown would clear those.


def _create_mode(meta: _Meta) -> int:
    return meta.mode if not meta.mode & 0o7000 else 0o600


def _finish_new(st: os.stat_result, meta: _Meta, target: int | str, *, symlink: bool) -> None:
    """Metadata of a just-created ``target`` (an fd, or a path never followed)
    whose ``st`` was taken after creation; as :func:`_finish_fd` otherwise."""
    if meta.mode & 0o7000:
        if isinstance(target, int):
            _finish_fd(target, meta)
        else:
            _finish_path(target, meta, symlink=symlink)
        return
    chowned = st.st_uid != meta.uid or st.st_gid != meta.gid
    if chowned:
        if isinstance(target, int):
            os.fchown(target, meta.uid, meta.gid)
        else:
            os.lchown(target, meta.uid, meta.gid)
    _set_xattrs(target, meta, is_link=symlink)
    # The umask, or a setgid parent directory, may have changed the mode.
    if not symlink and stat.S_IMODE(st.st_mode) != meta.mode:
        if isinstance(target, int):
            os.fchmod(target, meta.mode)
        else:
            os.chmod(target, meta.mode, follow_symlinks=False)
    if isinstance(target, int):
        os.utime(target, ns=(meta.atime, meta.mtime))
    else:
        os.utime(target, ns=(meta.atime, meta.mtime), follow_symlinks=False)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_small(path: str, data: bytes, meta: _Meta) -> None:
    fd = os.open(path, _O_CREATE, _create_mode(meta))
    try:
        if data:
            _write_all(fd, data)
        _finish_new(os.fstat(fd), meta, fd, symlink=False)
    finally:
        os.close(fd)


def _make_dir(path: str, meta: _Meta) -> None:
    os.mkdir(path, _create_mode(meta))
    _finish_new(os.lstat(path), meta, path, symlink=False)


def _write_symlink(path: str, target: str, meta: _Meta) -> None:
    os.symlink(target, path)
    _finish_new(os.lstat(path), meta, path, symlink=True)


def _write_sparse_chunk(fd: int, chunk: bytes) -> None:
    """Write ``chunk`` at the current offset, seeking over all-zero blocks so
    they become holes (the file is truncated to size at the end)."""
    view = memoryview(chunk)
    start = 0
    n = len(view)
    while start < n:
        end = min(start + _HOLE_BLOCK, n)
        block = view[start:end]
        if end - start == _HOLE_BLOCK and block == _ZERO_BLOCK:
            os.lseek(fd, _HOLE_BLOCK, os.SEEK_CUR)
        else:
            _write_all(fd, block)
        start = end


class _Budget:
    """Bytes of file data queued for workers; the parser waits when full."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            # One oversized request is let through alone, never starved.
            while self._used and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class _TarSource:
    """A forward-only, seekable-enough view of a stream, for ``tarfile``'s "r:" mode.

    ``tarfile``'s stream mode ("r|") reads its source 10 KiB at a time and
    re-joins and re-slices its buffer on every read, which made header
    parsing a good part of the extractor thread's time. This reads the source
    in blocks of ``block`` bytes and serves headers and small files as slices
    of the block in hand. ``seek`` moves forward freely (skipping data) and
    backward only within the block in hand, which is all ``tarfile`` needs to
    walk an archive member by member (it steps back one byte to check that
    a skipped member's data was really there).
    """

    def __init__(self, stream: IO[bytes], block: int = _CHUNK) -> None:
        self._stream = stream
        self._block = block
        self._buf = b""
        self._pos = 0  # read position within _buf
        self._base = 0  # stream offset of _buf[0]

    def tell(self) -> int:
        return self._base + self._pos

    def _refill(self) -> bool:
        """Replace the (fully consumed) block in hand by the next; False at the end."""
        data = self._stream.read(self._block)
        self._base += len(self._buf)
        self._buf = data
        self._pos = 0
        return bool(data)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._buf[self._pos :]]
            while self._refill():
                parts.append(self._buf)
            self._pos = len(self._buf)
            return b"".join(parts)
        end = self._pos + n
        if end <= len(self._buf):
            data = self._buf[self._pos : end]
            self._pos = end
            return data
        parts = [self._buf[self._pos :]]
        want = n - len(parts[0])
        self._pos = len(self._buf)
        while want and self._refill():
            take = min(want, len(self._buf))
            parts.append(self._buf[:take] if take < len(self._buf) else self._buf)
            self._pos = take
            want -= take
        return b"".join(parts)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self.tell()
        elif whence != os.SEEK_SET:
            raise OSError(errno.ESPIPE, "a tar stream cannot seek from its end")
        if offset < self._base:
            raise OSError(errno.ESPIPE, "a tar stream cannot seek backwards")
        while offset > self._base + len(self._buf):
            self._pos = len(self._buf)
            if not self._refill():
                # Past the end: later reads return nothing, as a file's would.
                return self.tell()
        self._pos = offset - self._base
        return offset


# ---------------------------------------------------------------------------
# Path kinds in the (merged) tree


class _Kind(enum.Enum):
    MISSING = 0
    DIR = 1
    SYMLINK = 2
    OTHER = 3


@dataclass(frozen=True, slots=True)
class _Found:
    kind: _Kind
    link: str = ""  # symlink target
    lower: str = ""  # a lower directory to copy metadata from (overlay)


def _kind_of(st: os.stat_result) -> _Kind:
    if stat.S_ISDIR(st.st_mode):
        return _Kind.DIR
    if stat.S_ISLNK(st.st_mode):
        return _Kind.SYMLINK
    return _Kind.OTHER


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    """Delete ``path`` (recursively if a directory), never following links."""
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for key in names:
        if key.startswith("trusted."):
            continue  # overlay's own bookkeeping is not copied up
        try:
            os.setxattr(
                dst, key, os.getxattr(src, key, follow_symlinks=False), follow_symlinks=False
            )
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                raise


# ---------------------------------------------------------------------------
# The extractor


class _Extractor:
    def __init__(self, root: str, options: ApplyOptions) -> None:
        self.root = os.path.realpath(root)
        self.opts = options
        self.overlay = options.whiteouts is Whiteouts.OVERLAY
        self.lowers = tuple(os.path.realpath(p) for p in options.lowers) if self.overlay else ()
        self.pool = (
            ThreadPoolExecutor(options.workers, thread_name_prefix="berth-apply")
            if options.workers > 0
            else None
        )
        self.budget = _Budget(options.max_inflight_bytes)
        self.pending: dict[str, Future[None]] = {}
        self.failed: BaseException | None = None
        self._failed_entry = ""
        self._mu = threading.Lock()
        # Relative paths known to be real directories in the root.
        self.known_dirs: set[str] = {""}
        # Overlay: for a merged-view directory, the lowers in which it is a
        # real (and visible) directory, nearest first.
        self.lower_dirs: dict[str, tuple[int, ...]] = {"": tuple(range(len(self.lowers)))}
        # What this layer created (opaque markers in plain mode keep these),
        # and the directories it created, empty at the time. A name in a
        # fresh directory that was not created cannot exist, which saves an
        # lstat per entry: that lstat is costly while workers create files in
        # the same directory (the lookup waits for the directory's lock).
        self.created: set[str] = set()
        self.fresh: set[str] = set()
        with os.scandir(self.root) as it:
            if next(it, None) is None:
                self.fresh.add("")
        self.dir_times: list[tuple[str, int, int]] = []
        self.stats = ApplyStats()

    # -- paths ---------------------------------------------------------------

    def abs(self, rel: str) -> str:
        return self.root + "/" + rel if rel else self.root

    @staticmethod
    def join(parent: str, base: str) -> str:
        return parent + "/" + base if parent else base

    def _forget(self, rel: str) -> None:
        """Drop cached facts about directory ``rel`` and everything under it."""
        if rel not in self.known_dirs and rel not in self.lower_dirs:
            return  # nothing below an unknown directory can be known either
        prefix = rel + "/"
        self.known_dirs = {d for d in self.known_dirs if d != rel and not d.startswith(prefix)}
        self.lower_dirs = {
            d: v for d, v in self.lower_dirs.items() if d != rel and not d.startswith(prefix)
        }

    # -- workers -------------------------------------------------------------

    def _check_failed(self) -> None:
        if self.failed is not None:
            raise self.failed

    def _submit(self, rel: str, nbytes: int, fn: Callable[[], None], name: str) -> None:
        assert self.pool is not None
        self._check_failed()
        # Every queued task costs at least _TASK_COST, which bounds how many
        # (empty files, symlinks) can pile up, not just their bytes.
        cost = nbytes + _TASK_COST
        self.budget.acquire(cost)

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                with self._mu:
                    if self.failed is None:
                        self.failed = _entry_error(name, exc)
                raise
            finally:
                self.budget.release(cost)

        fut = self.pool.submit(run)
        self.pending[rel] = fut
        if len(self.pending) > 4096:
            self.pending = {k: f for k, f in self.pending.items() if not f.done()}

    def _wait(self, fut: Future[None]) -> None:
        try:
            fut.result()
        except BaseException:
            self._check_failed()
            raise

    def _wait_path(self, rel: str) -> None:
        fut = self.pending.pop(rel, None)
        if fut is not None:
            self._wait(fut)

    def _wait_under(self, rel: str) -> None:
        """Wait for queued work at ``rel`` or below (before deleting it)."""
        if not self.pending:
            return
        if not rel:
            self._drain()
            return
        prefix = rel + "/"
        for key in [k for k in self.pending if k == rel or k.startswith(prefix)]:
            self._wait(self.pending.pop(key))

    def _drain(self) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            self._wait(fut)
        self._check_failed()

    def close(self, *, cancel: bool) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)

    # -- lookups in the (merged) tree -----------------------------------------

    def _lowers_of(self, rel: str) -> tuple[int, ...]:
        """Lowers in which directory ``rel`` is a visible real directory."""
        cached = self.lower_dirs.get(rel)
        if cached is not None:
            return cached
        parent, _, _ = rel.rpartition("/")
        result: list[int] = []
        if not _is_opaque(self.abs(rel)):
            for i in self._lowers_of(parent):
                path = self.lowers[i] + "/" + rel
                st = _lstat(path)
                if st is None:
                    if _is_opaque(self.lowers[i] + ("/" + parent if parent else "")):
                        break
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break  # a whiteout or non-directory hides everything below
                result.append(i)
                if _is_opaque(path):
                    break
        self.lower_dirs[rel] = tuple(result)
        return self.lower_dirs[rel]

    def _lookup(self, rel: str) -> _Found:
        st = _lstat(self.abs(rel))
        if st is not None and not (self.overlay and _is_whiteout(st)):
            kind = _kind_of(st)
            return _Found(kind, os.readlink(self.abs(rel)) if kind is _Kind.SYMLINK else "")
        if st is not None or not self.lowers:
            return _Found(_Kind.MISSING)
        parent, _, _ = rel.rpartition("/")
        if _is_opaque(self.abs(parent)):
            return _Found(_Kind.MISSING)
        for i in self._lowers_of(parent):
            path = self.lowers[i] + "/" + rel
            lst = _lstat(path)
            if lst is None:
                if _is_opaque(self.lowers[i] + ("/" + parent if parent else "")):
                    break
                continue
            if _is_whiteout(lst):
                break
            kind = _kind_of(lst)
            if kind is _Kind.SYMLINK:
                return _Found(kind, os.readlink(path))
            return _Found(kind, lower=path if kind is _Kind.DIR else "")
        return _Found(_Kind.MISSING)

    def _mkdir_implicit(self, rel: str, found: _Found) -> None:
        path = self.abs(rel)
        st = _lstat(path)
        if st is not None:  # an overlay whiteout: the directory comes back
            os.unlink(path)
        os.mkdir(path, 0o755)
        if st is not None:
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y")
        elif found.lower:
            # The upper copy of a lower directory must not change how the
            # merged directory looks: same owner, mode, times, attributes.
            lst = os.lstat(found.lower)
            os.lchown(path, lst.st_uid, lst.st_gid)
            os.chmod(path, stat.S_IMODE(lst.st_mode))
            _copy_xattrs(found.lower, path)
            os.utime(path, ns=(lst.st_atime_ns, lst.st_mtime_ns), follow_symlinks=False)
        self.known_dirs.add(rel)
        self.created.add(rel)
        self.fresh.add(rel)

    def resolve_dir(self, parts: Sequence[str], name: str) -> str:
        """The real directory ``parts`` names inside the root, as a relative path.

        Symlinks are followed inside the root; missing directories are
        created (from their lower-layer counterpart when there is one).
        Raises InvalidArgument when a component is not a directory or the
        links nest too deep.
        """
        cur = ""
        todo = list(reversed(parts))  # a stack: next component last
        links = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                cur = cur.rpartition("/")[0]  # stops at the root, as chroot does
                continue
            cand = self.join(cur, comp)
            if cand in self.known_dirs:
                cur = cand
                continue
            self._wait_path(cand)
            found = self._lookup(cand)
            if found.kind is _Kind.DIR:
                if found.lower:
                    self._mkdir_implicit(cand, found)
                self.known_dirs.add(cand)
                cur = cand
            elif found.kind is _Kind.SYMLINK:
                links += 1
                if links > _MAX_SYMLINKS:
                    raise errdefs.InvalidArgument(
                        f"layer entry {name!r}: too many levels of symbolic links: invalid argument"
                    )
                if found.link.startswith("/"):
                    cur = ""
                todo.extend(reversed(found.link.split("/")))
            elif found.kind is _Kind.MISSING:
                self._mkdir_implicit(cand, found)
                cur = cand
            else:
                raise errdefs.InvalidArgument(
                    f"layer entry {name!r}: {cand!r} is not a directory: invalid argument"
                )
        return cur

    # -- entries -------------------------------------------------------------

    def entry(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        self._check_failed()
        parts = clean_name(m.name)
        if not parts:
            return  # the root itself: containerd ignores it too
        base = parts[-1]
        parent = self.resolve_dir(parts[:-1], m.name)
        if base.startswith(WHITEOUT_PREFIX):
            if base == OPAQUE_MARKER:
                self._opaque(parent)
            else:
                self._whiteout(self.join(parent, whiteout_target(base, m.name)), m)
            return
        rel = self.join(parent, base)
        path = self.abs(rel)
        self._wait_path(rel)
        st = None if parent in self.fresh and rel not in self.created else _lstat(path)
        if st is not None and not (stat.S_ISDIR(st.st_mode) and m.isdir()):
            # Replace whatever is there (a directory only merges with a directory).
            self._delete(rel, st)
        self.created.add(rel)
        meta = _meta(m)

        if m.isreg():
            self._regular(rel, path, m, meta, tf)
        elif m.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                # Here, not on a worker: children need it, and measured,
                # queueing it (children waiting for it) was slower: more
                # workers contending for the parent directory's lock.
                _make_dir(path, meta)
                self.fresh.add(rel)
            else:
                _finish_path(path, meta)
            self.known_dirs.add(rel)
            self.dir_times.append((path, meta.atime, meta.mtime))
        elif m.issym():
            target = m.linkname
            if self.pool is None:
                _write_symlink(path, target, meta)
            else:
                self._submit(rel, 0, lambda: _write_symlink(path, target, meta), m.name)
        elif m.islnk():
            self._hardlink(path, m, meta)
        elif m.ischr() or m.isblk() or m.isfifo():
            if not m.isfifo() and not self.opts.allow_devices:
                raise errdefs.InvalidArgument(
                    f"layer entry {m.name!r}: device nodes are not allowed: invalid argument"
                )
            kind = stat.S_IFIFO if m.isfifo() else stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            _finish_path(path, meta)
        else:
            raise errdefs.InvalidArgument(
                f"layer entry {m.name!r}: unsupported tar entry type {m.type!r}: invalid argument"
            )

    def _read(self, tf: tarfile.TarFile, n: int, name: str) -> bytes:
        data: bytes = tf.fileobj.read(n)  # type: ignore[union-attr]
        if len(data) != n:
            raise errdefs.InvalidArgument(
                f"layer entry {name!r}: unexpected end of tar stream: invalid argument"
            )
        return data

    def _regular(
        self, rel: str, path: str, m: tarfile.TarInfo, meta: _Meta, tf: tarfile.TarFile
    ) -> None:
        assert tf.fileobj is not None
        tf.fileobj.seek(m.offset_data)
        sparse: list[tuple[int, int]] | None = getattr(m, "sparse", None)
        if sparse is None and m.size <= self.opts.small_file_limit:
            data = self._read(tf, m.size, m.name) if m.size else b""
            if self.pool is None:
                _write_small(path, data, meta)
            else:
                self._submit(rel, len(data), lambda: _write_small(path, data, meta), m.name)
            return
        # Big or sparse: stream it here, chunk by chunk, keeping holes.
        fd = os.open(path, _O_CREATE, 0o600)
        try:
            regions = sparse if sparse is not None else [(0, m.size)]
            for offset, length in regions:
                os.lseek(fd, offset, os.SEEK_SET)
                left = length
                while left:
                    chunk = self._read(tf, min(left, _CHUNK), m.name)
                    _write_sparse_chunk(fd, chunk)
                    left -= len(chunk)
            os.ftruncate(fd, m.size)
            _finish_fd(fd, meta)
        finally:
            os.close(fd)

    def _hardlink(self, path: str, m: tarfile.TarInfo, meta: _Meta) -> None:
        try:
            parts = clean_name(m.linkname)
        except errdefs.InvalidArgument:
            raise errdefs.InvalidArgument(
                f"layer entry {m.name!r}: hardlink target {m.linkname!r} escapes the root:"
                " invalid argument"
            ) from None
        if not parts:
            raise errdefs.InvalidArgument(
                f"layer entry {m.name!r}: hardlink to the root directory: invalid argument"
            )
        parent = self.resolve_dir(parts[:-1], m.name)
        target_rel = self.join(parent, parts[-1])
        self._wait_path(target_rel)
        target = self.abs(target_rel)
        st = _lstat(target)
        if st is None and self.overlay:
            self._copy_up(target_rel, m.name)
            st = _lstat(target)
        if st is None:
            raise errdefs.InvalidArgument(
                f"layer entry {m.name!r}: hardlink target {m.linkname!r} not found: invalid argument"
            )
        if stat.S_ISDIR(st.st_mode):
            raise errdefs.InvalidArgument(
                f"layer entry {m.name!r}: hardlink to directory {m.linkname!r}: invalid argument"
            )
        os.link(target, path, follow_symlinks=False)
        # As containerd does, the link's header metadata applies to the inode.
        _finish_path(path, meta, symlink=stat.S_ISLNK(st.st_mode))

    def _copy_up(self, rel: str, name: str) -> None:
        """Copy a lower-layer file into the upper directory so a hard link can
        refer to it there (links cannot cross layers)."""
        parent = rel.rpartition("/")[0]
        for i in self._lowers_of(parent):
            src = self.lowers[i] + "/" + rel
            st = _lstat(src)
            if st is None:
                continue
            if _is_whiteout(st) or not stat.S_ISREG(st.st_mode):
                return
            dst = self.abs(rel)
            shutil.copyfile(src, dst, follow_symlinks=False)
            os.lchown(dst, st.st_uid, st.st_gid)
            _copy_xattrs(src, dst)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            return

    def _delete(self, rel: str, st: os.stat_result) -> None:
        """Delete what is at ``rel`` (``st`` is its lstat)."""
        if stat.S_ISDIR(st.st_mode):
            self._wait_under(rel)
            shutil.rmtree(self.abs(rel))
        else:
            os.unlink(self.abs(rel))

    def _whiteout(self, rel: str, m: tarfile.TarInfo) -> None:
        path = self.abs(rel)
        self._wait_path(rel)
        st = _lstat(path)
        if st is not None:
            self._delete(rel, st)
        if self.overlay:
            os.mknod(path, stat.S_IFCHR, 0)
            os.lchown(path, m.uid, m.gid)
        self._forget(rel)

    def _opaque(self, rel: str) -> None:
        path = self.abs(rel)
        if self.overlay:
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y")
            prefix = rel + "/"
            for key in [k for k in self.lower_dirs if k == rel or k.startswith(prefix)]:
                self.lower_dirs[key] = ()
            return
        # Lower contents go; what this layer already put here stays.
        self._wait_under(rel)
        self._prune(rel)

    def _prune(self, rel: str) -> None:
        with os.scandir(self.abs(rel)) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in children:
            child = self.join(rel, name)
            if child not in self.created:
                self._wait_under(child)
                _remove(self.abs(child))
                self._forget(child)
            elif is_dir:
                self._prune(child)

    # -- the whole stream ----------------------------------------------------

    def finish(self) -> None:
        self._drain()
        # Directory times go last: creating children changed them.
        for path, atime, mtime in self.dir_times:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def _entry_error(name: str, exc: BaseException) -> BaseException:
    """Name the entry in an error that does not already."""
    if isinstance(exc, errdefs.BerthError):
        return exc
    if isinstance(exc, OSError):
        what = os.strerror(exc.errno) if exc.errno else str(exc)
        return errdefs.BerthError(f"failed to apply layer entry {name!r}: {what}")
    return exc


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            m = tf.next()
        except tarfile.ReadError as exc:
            raise errdefs.InvalidArgument(f"invalid tar stream: {exc}: invalid argument") from None
        if m is None:
            return
        # tarfile keeps every member for random access we never do.
        cast(Any, tf).members.clear()
        yield m


def apply_tar(
    stream: IO[bytes],
    root: str | os.PathLike[str],
    options: ApplyOptions | None = None,
) -> ApplyStats:
    """Apply the uncompressed layer tar ``stream`` to directory ``root``.

    Reads the stream up to the tar's end-of-archive marker (the caller drains
    what follows if it hashes the stream). Blocking; runs a private worker
    pool that is gone when this returns.

    Raises InvalidArgument, naming the entry, for hostile or malformed
    entries (see the module notes) and for a corrupt tar stream; errors of
    the stream itself (e.g. corrupt compression) propagate unchanged;
    filesystem failures become ``errdefs.BerthError`` (gRPC UNKNOWN) naming
    the entry. The tree may be half-applied after an error: the caller
    discards it (the unpacker removes the active snapshot).
    """
    opts = options or ApplyOptions()
    ex = _Extractor(os.fspath(root), opts)
    ok = False
    name = ""
    try:
        try:
            tf = tarfile.open(fileobj=cast(Any, _TarSource(stream)), mode="r:", errorlevel=1)
        except tarfile.ReadError as exc:
            if str(exc) == "empty file":
                ok = True
                return ex.stats  # zero bytes: an empty layer, as Go's tar reader sees it
            raise errdefs.InvalidArgument(f"invalid tar stream: {exc}: invalid argument") from None
        for m in _members(tf):
            name = m.name
            ex.stats.entries += 1
            ex.stats.size += m.size
            ex.entry(m, tf)
        name = ""
        ex.finish()
        ok = True
        return ex.stats
    except OSError as exc:
        raise _entry_error(name, exc) from exc
    finally:
        ex.close(cancel=not ok)
