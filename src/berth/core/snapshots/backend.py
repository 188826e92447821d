"""What the overlayfs and native backends share: records, removal and cleanup.

A backend lays its trees out as ``<root>/snapshots/<id>/`` and keeps records
in ``<root>/metadata.db``. New trees are built in ``snapshots/new-*`` and
renamed into place inside the record transaction, and removed trees are
renamed to ``snapshots/rm-<id>`` before deletion, so a crash at any point
leaves only directories that :meth:`cleanup` recognises as unreferenced.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from berth import errdefs
from berth.core.mount import Mount
from berth.core.snapshots import Info, Kind, Snapshotter, Usage, storage
from berth.core.snapshots.fsutil import disk_usage

log = logging.getLogger("berth.snapshots")


class BackendSnapshotter(Snapshotter):
    """A non-namespaced snapshotter over a directory tree and a MetaStore."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self.snapshots_dir = root / "snapshots"
        self.snapshots_dir.mkdir(exist_ok=True, mode=0o700)
        self.ms = storage.MetaStore(root / "metadata.db")
        # new-* dirs of creates in flight in this process; cleanup() spares them.
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()

    # -- layout hooks --------------------------------------------------------

    def snapshot_dir(self, sid: str) -> Path:
        return self.snapshots_dir / sid

    @abstractmethod
    def _changes_dir(self, sid: str) -> Path:
        """The directory holding a snapshot's own changes (what usage measures)."""

    @abstractmethod
    def _mounts(self, s: storage.Snapshot) -> list[Mount]:
        """Mounts for an active or view snapshot record."""

    @abstractmethod
    def _populate(self, td: Path, kind: Kind, parent_id: str | None) -> bool:
        """Fill new temp dir ``td`` for a snapshot; False when the snapshot needs
        no directory of its own (``td`` is then discarded)."""

    # -- Snapshotter ---------------------------------------------------------

    def stat(self, key: str) -> Info:
        with self.ms.read() as cur:
            return storage.get_info(cur, key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self.ms.tx() as cur:
            return storage.update_info(cur, info, fieldpaths)

    def usage(self, key: str) -> Usage:
        with self.ms.read() as cur:
            sid, info, usage = storage.get_info(cur, key)
        if info.kind is Kind.ACTIVE:
            return disk_usage(self._changes_dir(sid))
        return usage

    def mounts(self, key: str) -> list[Mount]:
        with self.ms.read() as cur:
            s = storage.get_snapshot(cur, key)
        return self._mounts(s)

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels or {})

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels or {})

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        # Look the parent up first so slow directory work (a native copy) runs
        # outside the record lock; the insert below re-checks it.
        pid: str | None = None
        if parent:
            with self.ms.read() as cur:
                pid = storage.parent_id(cur, parent)
        with self._inflight_lock:
            td = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir))
            self._inflight.add(td.name)
        placed: Path | None = None
        try:
            needs_dir = self._populate(td, kind, pid)
            with self.ms.tx() as cur:
                s = storage.create(cur, kind, key, parent, labels)
                if (s.parent_ids[0] if s.parent_ids else None) != pid:
                    # The parent was removed and its key reused while we copied.
                    raise errdefs.FailedPrecondition(
                        f"parent {parent!r} changed while preparing {key!r}; retry"
                    )
                if needs_dir:
                    placed = self.snapshot_dir(s.id)
                    os.rename(td, placed)
            return self._mounts(s)
        except BaseException:
            if placed is not None and placed.exists():
                shutil.rmtree(placed, ignore_errors=True)
            raise
        finally:
            if td.exists():
                shutil.rmtree(td, ignore_errors=True)
            with self._inflight_lock:
                self._inflight.discard(td.name)

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        with self.ms.read() as cur:
            sid, info, _ = storage.get_info(cur, key)
        # Measure before taking the write lock; the walk can take a while.
        usage = disk_usage(self._changes_dir(sid)) if info.kind is Kind.ACTIVE else Usage()
        with self.ms.tx() as cur:
            committed = storage.commit_active(cur, key, name, usage, labels or {})
            if committed != sid:
                # ``key`` was replaced between the two transactions: measure
                # the snapshot actually being committed.
                usage = disk_usage(self._changes_dir(committed))
                cur.execute(
                    "UPDATE snapshots SET size=?, inodes=? WHERE id=?",
                    (usage.size, usage.inodes, int(committed)),
                )

    def remove(self, key: str) -> None:
        trash: Path | None = None
        with self.ms.tx() as cur:
            sid, _ = storage.remove(cur, key)
            path = self.snapshot_dir(sid)
            if path.exists():
                trash = self.snapshots_dir / f"rm-{sid}"
                os.rename(path, trash)
        if trash is not None:
            # The record is gone; a failure here only leaves a dir for cleanup().
            try:
                shutil.rmtree(trash)
            except OSError as exc:
                log.warning("failed to remove snapshot dir %s: %s", trash, exc)

    def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        with self.ms.read() as cur:
            return storage.walk_info(cur, filters)

    def cleanup(self) -> None:
        # The write transaction keeps creates from renaming new-* dirs into
        # place mid-scan; the in-flight set spares dirs still being filled.
        with self.ms.tx() as cur, self._inflight_lock:
            keep = set(storage.id_map(cur)) | self._inflight
            doomed = [
                self.snapshots_dir / name
                for name in os.listdir(self.snapshots_dir)
                if name not in keep
            ]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)

    def close(self) -> None:
        self.ms.close()
