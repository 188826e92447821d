"""A task's root filesystem as the shim mounts it for runc and takes it down.

The mechanics - fstab-style options to mount(2) flags, the bind remount for
``ro``/``nosuid``/``nodev``/``noexec``, overlay lowerdir compaction for images
whose layer list does not fit in a page, unmount retries - are
:mod:`berth.core.mount`'s, shared with the daemon so that one implementation
mounts every snapshot (it is standard library only, so the shim stays small).
What is the shim's own is the policy on top:

* a failed mount undoes the rootfs components already mounted and is reported
  in containerd's runc-shim wording;
* a rootfs still busy after half a second is detached lazily, so a stray open
  file cannot keep a deleted container's rootfs (and its snapshot) mounted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from berth import errdefs
from berth.core.mount import Mount, MountError, mount, unmount_all

__all__ = ["Mount", "MountError", "mount_rootfs", "unmount_rootfs"]

log = logging.getLogger(__name__)

# 10 tries 50 ms apart before a busy rootfs is detached.
_BUSY_RETRIES = 10


def mount_rootfs(mounts: Sequence[Mount], rootfs: str) -> None:
    """Mount ``mounts`` on ``rootfs`` in order (later ones stack on top).

    When one fails, those already mounted are unmounted again. Blocking;
    raises ``errdefs.BerthError``.
    """
    done = 0
    for m in mounts:
        try:
            mount(m, rootfs)
        except MountError as exc:
            if done:
                try:
                    unmount_rootfs(rootfs)
                except MountError as undo:
                    log.warning("failed to undo partial rootfs mount: %s", undo)
            raise errdefs.BerthError(
                f"failed to mount rootfs component {m.type} {m.source} {list(m.options)}: "
                f"{os.strerror(exc.errno)}"
            ) from None
        done += 1


def unmount_rootfs(rootfs: str) -> None:
    """Unmount everything stacked on ``rootfs`` (no error when nothing is).

    Blocking; raises :class:`MountError` when a mount can be neither
    unmounted nor detached.
    """
    unmount_all(rootfs, retries=_BUSY_RETRIES, detach_busy=True)
