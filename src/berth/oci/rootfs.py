"""Reading files of a container's root filesystem without leaving it.

An image is untrusted input. Its ``/etc/passwd`` may be a symlink to
``/etc/shadow`` or ``../../../../etc/passwd``; followed naively from the host,
that reads the host's file. Here every path component is walked by hand with
``O_PATH | O_NOFOLLOW`` relative to the previous directory's descriptor:
symlinks are expanded as the container would see them (an absolute target
restarts at the rootfs root, ``..`` stops at it), so nothing outside the
rootfs is ever opened. The result is what ``chroot`` would open, with no
privilege and no mount needed.

Why not ``openat2(RESOLVE_IN_ROOT)``: Python has no binding, and this walk is
short (passwd and group lookups), portable to older kernels and easy to test.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from berth import errdefs

__all__ = ["MAX_FILE_SIZE", "MAX_SYMLINKS", "read_file_in_root"]

# Linux gives up after 40 links in one lookup; so do we.
MAX_SYMLINKS = 40
# A passwd or group file is kilobytes; a huge one is hostile or broken.
MAX_FILE_SIZE = 16 << 20

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _open_in_root(root_fd: int, path: str) -> int:
    """A read-only descriptor of the regular file ``path`` inside ``root_fd``.

    Raises FileNotFoundError or NotADirectoryError when it does not exist
    (inside the root), and InvalidArgument for symlink loops, non-directories used as directories
    and targets that are not regular files.
    """
    # stack[-1] is the directory being walked; stack[0] the rootfs root, which
    # ".." never pops.
    stack = [os.dup(root_fd)]
    parts: deque[str] = deque(path.split("/"))
    links = 0
    try:
        while parts:
            part = parts.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            here = stack[-1]
            fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
            try:
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise errdefs.InvalidArgument(
                            f"{path}: too many levels of symbolic links in the rootfs"
                        )
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    parts.extendleft(reversed(target.split("/")))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not any(p not in ("", ".") for p in parts):
                        raise errdefs.InvalidArgument(f"{path}: is a directory in the rootfs")
                    stack.append(fd)
                    fd = -1
                    continue
                if parts:
                    # As the kernel does: a file used as a directory is ENOTDIR,
                    # which callers treat like a missing file.
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
                if not stat.S_ISREG(st.st_mode):
                    raise errdefs.InvalidArgument(f"{path}: not a regular file in the rootfs")
                # The last component is a regular file: open it for reading by
                # name (no follow, no blocking), then check it is still the
                # same inode the walk saw.
                out = os.open(
                    part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=here
                )
                again = os.fstat(out)
                if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                    os.close(out)
                    raise errdefs.InvalidArgument(f"{path}: changed while being opened")
                return out
            finally:
                if fd >= 0:
                    os.close(fd)
        raise errdefs.InvalidArgument(f"{path!r} names the rootfs root, not a file")
    finally:
        for d in stack:
            os.close(d)


def read_file_in_root(root: str, path: str) -> bytes | None:
    """The bytes of ``path`` as the container at ``root`` would see it.

    Returns None when the file does not exist inside the rootfs (a dangling
    symlink included). Raises InvalidArgument when the path cannot be
    followed safely (symlink loop, not a regular file, larger than
    ``MAX_FILE_SIZE``) and NotFound when ``root`` itself is missing. Blocking:
    call it off the event loop.
    """
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise errdefs.NotFound(f"rootfs {root} does not exist") from None
    except NotADirectoryError:
        raise errdefs.InvalidArgument(f"rootfs {root} is not a directory") from None
    try:
        try:
            fd = _open_in_root(root_fd, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise errdefs.InvalidArgument(
                f"{path} in the rootfs is larger than {MAX_FILE_SIZE} bytes"
            )
        return data
    finally:
        os.close(root_fd)
