"""The native snapshotter: every active snapshot is a full copy of its parent.

It works on any filesystem and needs no overlayfs, at the price of copying
the parent tree on each prepare (see ``fsutil.copy_tree``). Layout under the
plugin root: ``snapshots/<id>`` is the tree itself. A view of a committed
snapshot needs no copy: it is a read-only bind of the parent's tree, as in
containerd, so it owns no directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from berth.core.mount import Mount
from berth.core.snapshots import Kind, storage
from berth.core.snapshots.backend import BackendSnapshotter
from berth.core.snapshots.fsutil import copy_tree


class NativeSnapshotter(BackendSnapshotter):
    def _changes_dir(self, sid: str) -> Path:
        return self.snapshot_dir(sid)

    def _populate(self, td: Path, kind: Kind, parent_id: str | None) -> bool:
        if kind is Kind.VIEW and parent_id is not None:
            return False
        os.chmod(td, 0o755)
        if parent_id is not None:
            copy_tree(self.snapshot_dir(parent_id), td)
        return True

    def _mounts(self, s: storage.Snapshot) -> list[Mount]:
        flag = "ro" if s.kind is Kind.VIEW else "rw"
        if not s.parent_ids or s.kind is Kind.ACTIVE:
            source = self.snapshot_dir(s.id)
        else:
            source = self.snapshot_dir(s.parent_ids[0])
        return [Mount("bind", str(source), ["rbind", flag])]
