"""The overlayfs snapshotter: each snapshot is an upper dir over its parents.

Layout under the plugin root: ``snapshots/<id>/fs`` holds a snapshot's own
changes and ``snapshots/<id>/work`` is overlayfs' scratch dir (active only).
Mounts are the ones containerd 1.6 emits, so clients that inspect them behave
the same:

* no parent: a bind mount of ``fs`` (``rw``, or ``ro`` for a view), because
  overlayfs needs at least one lower layer;
* a view of exactly one layer: a read-only bind of that layer's ``fs``;
* otherwise ``overlay`` with ``lowerdir`` listing parents nearest first, plus
  ``upperdir``/``workdir`` when active. ``index=off`` is added whenever the
  kernel has the ``index`` feature, as containerd does, so that layers may be
  shared by several mounts and copied trees are never tied to their origin.

``userxattr`` is never needed: berthd runs as real root.
"""

from __future__ import annotations

import os
from pathlib import Path

from berth.core.mount import Mount
from berth.core.snapshots import Kind, storage
from berth.core.snapshots.backend import BackendSnapshotter

_INDEX_PARAM = Path("/sys/module/overlay/parameters/index")


class OverlaySnapshotter(BackendSnapshotter):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.index_off = _INDEX_PARAM.exists()

    def upper_path(self, sid: str) -> Path:
        return self.snapshot_dir(sid) / "fs"

    def work_path(self, sid: str) -> Path:
        return self.snapshot_dir(sid) / "work"

    def _changes_dir(self, sid: str) -> Path:
        return self.upper_path(sid)

    def _populate(self, td: Path, kind: Kind, parent_id: str | None) -> bool:
        os.mkdir(td / "fs", 0o755)
        if kind is Kind.ACTIVE:
            os.mkdir(td / "work", 0o711)
        if parent_id is not None:
            # The new upper's root takes the parent's owner, so a layer owned
            # by a non-root user stays writable to it in the merged view.
            st = os.stat(self.upper_path(parent_id))
            os.lchown(td / "fs", st.st_uid, st.st_gid)
        # tempfile.mkdtemp made td 0700; the tree must be traversable.
        os.chmod(td, 0o755)
        return True

    def _mounts(self, s: storage.Snapshot) -> list[Mount]:
        if not s.parent_ids:
            flag = "ro" if s.kind is Kind.VIEW else "rw"
            return [Mount("bind", str(self.upper_path(s.id)), [flag, "rbind"])]
        options: list[str] = []
        if self.index_off:
            options.append("index=off")
        if s.kind is Kind.ACTIVE:
            options.append(f"workdir={self.work_path(s.id)}")
            options.append(f"upperdir={self.upper_path(s.id)}")
        elif len(s.parent_ids) == 1:
            return [Mount("bind", str(self.upper_path(s.parent_ids[0])), ["ro", "rbind"])]
        lower = ":".join(str(self.upper_path(p)) for p in s.parent_ids)
        options.append(f"lowerdir={lower}")
        return [Mount("overlay", "overlay", options)]
