"""Namespaced snapshots: the metadata layer over any backend snapshotter.

Clients name snapshots by key within a namespace; backends know one flat key
space. As containerd's metadata snapshotter does, each namespaced key maps to
a backend key ``<namespace>/<seq>/<key>`` (``seq`` from a per-snapshotter
counter), recorded in the metadata database's ``snapshots`` table together
with the parent, labels and times. Consequences:

* two namespaces may hold the same key, and never see each other's snapshots;
* committed snapshots are **not** shared across namespaces: unpacking the same
  layer in two namespaces stores it twice. containerd 1.6 behaves the same
  (only remote snapshotters dedupe, via the ``containerd.io/snapshot.ref``
  target label, which this layer honours only for its AlreadyExists check);
* only labels prefixed ``containerd.io/snapshot/`` reach the backend.

Locking. Backend work (mkdir, copies, usage walks) never runs inside a
metadata transaction, so one slow native copy does not stall every other
request: each operation is a short transaction to check and reserve, the
backend call, and a short transaction to record. Two locks make that safe:

* per-key locks serialise operations on the same namespaced keys (a commit
  against a concurrent remove of its key, two prepares of one key);
* a readers-writer lock lets any number of operations run while garbage
  collection's backend sweep (:meth:`MetadataSnapshotter.collect`) waits for
  them, so it never deletes a backend snapshot whose record is not yet written.

Garbage collection joins through :class:`SnapshotKind`, which implements the
collector's ``ResourceKind``: node keys are ``<snapshotter>/<key>``; roots are
snapshots labelled ``containerd.io/gc.root``; a snapshot references its parent
and whatever its ``containerd.io/gc.ref.*`` labels name; sweeping deletes
records, and cleanup then removes backend snapshots no record maps to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from berth import errdefs, filters
from berth.core.metadata import namespaces as nsmod
from berth.core.metadata.db import DB, now_ns, register_schema
from berth.core.metadata.gc import (
    SNAPSHOT,
    Node,
    add_lease_resource,
    is_root,
    label_refs,
    remove_lease_resource,
)
from berth.core.mount import Mount
from berth.core.snapshots import (
    SNAPSHOT_REF_LABEL,
    Info,
    Kind,
    Snapshotter,
    Usage,
    adapt_info,
    apply_label_update,
    inherited_labels,
    validate_labels,
)

log = logging.getLogger("berth.snapshots")

register_schema(
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        namespace TEXT NOT NULL,
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key)
    );
    CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
    CREATE TABLE IF NOT EXISTS snapshot_sequences (
        snapshotter TEXT PRIMARY KEY,
        next INTEGER NOT NULL
    );
    """,
    namespaced=(("snapshots", "snapshots"),),
)


class MutationSink(Protocol):
    """The part of the garbage collector a store reports writes to."""

    def mutated(self, *, deletion: bool = False) -> None: ...

    def mark_dirty(self, kind: str) -> None: ...


class _RWLock:
    """Many readers or one writer; writers wait for readers to drain."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _KeyLocks:
    """Mutexes per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, *keys: tuple[str, str]) -> Iterator[None]:
        ordered = sorted(set(keys))  # a global order prevents deadlock
        acquired: list[tuple[str, str]] = []
        try:
            for k in ordered:
                with self._mu:
                    lock, users = self._locks.get(k, (threading.Lock(), 0))
                    self._locks[k] = (lock, users + 1)
                lock.acquire()
                acquired.append(k)
            yield
        finally:
            for k in reversed(acquired):
                with self._mu:
                    lock, users = self._locks[k]
                    lock.release()
                    if users == 1:
                        del self._locks[k]
                    else:
                        self._locks[k] = (lock, users - 1)


@dataclass(frozen=True)
class SnapshotRecord:
    """One namespaced snapshot record, as garbage collection sees it."""

    namespace: str
    snapshotter: str
    key: str
    backend_key: str
    parent: str
    labels: dict[str, str]


def _record(row: sqlite3.Row) -> SnapshotRecord:
    return SnapshotRecord(
        namespace=row["namespace"],
        snapshotter=row["snapshotter"],
        key=row["key"],
        backend_key=row["backend_key"],
        parent=row["parent"],
        labels=json.loads(row["labels"]),
    )


def records(cur: sqlite3.Cursor, snapshotter: str | None = None) -> list[SnapshotRecord]:
    """Every snapshot record (of one snapshotter, if named), in any namespace."""
    if snapshotter is None:
        rows = cur.execute("SELECT * FROM snapshots").fetchall()
    else:
        rows = cur.execute("SELECT * FROM snapshots WHERE snapshotter=?", (snapshotter,)).fetchall()
    return [_record(r) for r in rows]


def delete_record(cur: sqlite3.Cursor, namespace: str, snapshotter: str, key: str) -> None:
    """Delete one record (garbage collection's sweep). The backend snapshot is
    reclaimed later by :meth:`MetadataSnapshotter.collect`."""
    cur.execute(
        "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
        (namespace, snapshotter, key),
    )


def _lease_type(snapshotter: str) -> str:
    return f"snapshots/{snapshotter}"


class MetadataSnapshotter:
    """One backend, shared by every namespace; see :meth:`namespaced`."""

    def __init__(
        self,
        db: DB,
        name: str,
        backend: Snapshotter,
        *,
        collector: MutationSink | None = None,
    ) -> None:
        self.db = db
        self.name = name
        self.backend = backend
        self.collector = collector
        self._gc_lock = _RWLock()
        self._keys = _KeyLocks()

    def namespaced(self, namespace: str, *, lease: str | None = None) -> NamespacedSnapshotter:
        """The :class:`Snapshotter` of ``namespace``. With ``lease``, every
        snapshot created through it becomes a resource of that lease."""
        return NamespacedSnapshotter(self, namespace, lease)

    def _mutated(self, *, deletion: bool = False) -> None:
        if self.collector is not None:
            if deletion:
                self.collector.mark_dirty(SNAPSHOT)
            self.collector.mutated(deletion=deletion)

    def _next_backend_key(self, cur: sqlite3.Cursor, namespace: str, key: str) -> str:
        cur.execute(
            "INSERT INTO snapshot_sequences(snapshotter, next) VALUES (?, 1)"
            " ON CONFLICT(snapshotter) DO UPDATE SET next = next + 1",
            (self.name,),
        )
        seq = cur.execute(
            "SELECT next FROM snapshot_sequences WHERE snapshotter=?", (self.name,)
        ).fetchone()["next"]
        return f"{namespace}/{seq}/{key}"

    def collect(self) -> list[str]:
        """Remove backend snapshots that no namespace's record maps to, children
        first, then let the backend reclaim disk. Returns the removed backend
        keys. Blocks until in-flight operations on this snapshotter finish.
        Cost: a scan of all records and all backend snapshots.
        """
        removed: list[str] = []
        with self._gc_lock.exclusive():
            with self.db.read() as cur:
                seen = {r.backend_key for r in records(cur, self.name)}
            infos = self.backend.walk()
            children: dict[str, list[str]] = {}
            for info in infos:
                children.setdefault(info.parent, []).append(info.name)

            def prune(key: str) -> None:
                for child in children.get(key, ()):
                    prune(child)
                if key in seen:
                    return
                try:
                    self.backend.remove(key)
                    removed.append(key)
                except errdefs.FailedPrecondition as exc:
                    # A kept child still needs it: fine, it stays.
                    log.debug("snapshot %s kept: %s", key, exc)
                except errdefs.NotFound:
                    pass

            for root in children.get("", ()):
                prune(root)
            self.backend.cleanup()
        return removed


class NamespacedSnapshotter(Snapshotter):
    """A namespace's view of a :class:`MetadataSnapshotter` (blocking calls)."""

    def __init__(self, owner: MetadataSnapshotter, namespace: str, lease: str | None) -> None:
        self.owner = owner
        self.namespace = namespace
        self.lease = lease

    # -- helpers ---------------------------------------------------------------

    @property
    def _db(self) -> DB:
        return self.owner.db

    @property
    def _backend(self) -> Snapshotter:
        return self.owner.backend

    def _row(self, cur: sqlite3.Cursor, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = cur.execute(
            "SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            (self.namespace, self.owner.name, key),
        ).fetchone()
        return row

    def _require(self, cur: sqlite3.Cursor, key: str) -> sqlite3.Row:
        row = self._row(cur, key)
        if row is None:
            raise errdefs.NotFound(f"snapshot {key} does not exist: not found")
        return row

    def _resolve(self, key: str) -> str:
        with self._db.read() as cur:
            backend_key: str = self._require(cur, key)["backend_key"]
        return backend_key

    def _check_lease(self, cur: sqlite3.Cursor) -> None:
        # Fail before any backend work when the request's lease is gone; the
        # resource itself is added with the record, in the final transaction.
        if self.lease is None:
            return
        row = cur.execute(
            "SELECT 1 FROM leases WHERE namespace=? AND id=?", (self.namespace, self.lease)
        ).fetchone()
        if row is None:
            raise errdefs.NotFound(
                f"lease {errdefs.go_quote(self.lease)} does not exist: not found"
            )

    def _lock(self, *keys: str) -> contextlib.AbstractContextManager[None]:
        return self.owner._keys.hold(*((self.namespace, k) for k in keys))

    @staticmethod
    def _merge(backend: Info, row: sqlite3.Row) -> Info:
        lbls = dict(backend.labels)
        lbls.update(json.loads(row["labels"]))
        return Info(
            name=row["key"],
            kind=backend.kind,
            parent=row["parent"],
            labels=lbls,
            created=row["created_at"],
            updated=row["updated_at"],
        )

    # -- Snapshotter -------------------------------------------------------------

    def stat(self, key: str) -> Info:
        with self._db.read() as cur:
            row = self._require(cur, key)
        return self._merge(self._backend.stat(row["backend_key"]), row)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        if not info.name:
            raise errdefs.InvalidArgument("snapshot name must not be empty: invalid argument")
        with self._lock(info.name), self.owner._gc_lock.shared():
            with self._db.tx() as cur:
                row = self._require(cur, info.name)
                lbls = apply_label_update(json.loads(row["labels"]), info, fieldpaths)
                validate_labels(lbls)
                updated = now_ns()
                cur.execute(
                    "UPDATE snapshots SET labels=?, updated_at=?"
                    " WHERE namespace=? AND snapshotter=? AND key=?",
                    (
                        json.dumps(lbls, sort_keys=True),
                        updated,
                        self.namespace,
                        self.owner.name,
                        info.name,
                    ),
                )
                # Inside the transaction, as containerd does, so a backend
                # failure rolls the record back too; backend updates are one
                # small SQLite write.
                inner = Info(name=row["backend_key"], labels=inherited_labels(lbls))
                binfo = self._backend.update(inner, fieldpaths)
                row = self._require(cur, info.name)
        self.owner._mutated()
        return self._merge(binfo, row)

    def usage(self, key: str) -> Usage:
        return self._backend.usage(self._resolve(key))

    def mounts(self, key: str) -> list[Mount]:
        return self._backend.mounts(self._resolve(key))

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(key, parent, Kind.ACTIVE, dict(labels or {}))

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(key, parent, Kind.VIEW, dict(labels or {}))

    def _create(self, key: str, parent: str, kind: Kind, lbls: dict[str, str]) -> list[Mount]:
        if not key:
            raise errdefs.InvalidArgument("snapshot key must not be empty: invalid argument")
        validate_labels(lbls)
        lbls = {k: v for k, v in lbls.items() if v}
        target = lbls.get(SNAPSHOT_REF_LABEL, "")
        ns, name = self.namespace, self.owner.name
        with self._lock(key), self.owner._gc_lock.shared():
            with self._db.tx() as cur:
                nsmod.ensure(cur, ns)
                if target and self._row(cur, target) is not None:
                    raise errdefs.AlreadyExists(
                        f"target snapshot {errdefs.go_quote(target)}: already exists"
                    )
                if self._row(cur, key) is not None:
                    raise errdefs.AlreadyExists(f"snapshot {errdefs.go_quote(key)}: already exists")
                bparent = ""
                if parent:
                    prow = self._row(cur, parent)
                    if prow is None:
                        raise errdefs.NotFound(
                            f"parent snapshot {parent} does not exist: not found"
                        )
                    bparent = prow["backend_key"]
                self._check_lease(cur)
                bkey = self.owner._next_backend_key(cur, ns, key)
            bopts = inherited_labels(lbls)
            try:
                if kind is Kind.VIEW:
                    mounts = self._backend.view(bkey, bparent, labels=bopts)
                else:
                    mounts = self._backend.prepare(bkey, bparent, labels=bopts)
            except errdefs.AlreadyExists as exc:
                # Keys are fresh by construction; a clash means the backend
                # is out of step with the records, not that the key is taken.
                raise errdefs.BerthError(f"unexpected error from snapshotter: {exc}") from exc
            try:
                with self._db.tx() as cur:
                    if parent:
                        prow = self._row(cur, parent)
                        if prow is None or prow["backend_key"] != bparent:
                            raise errdefs.NotFound(
                                f"parent snapshot {parent} does not exist: not found"
                            )
                    if self.lease is not None:
                        add_lease_resource(cur, ns, self.lease, _lease_type(name), key)
                    ts = now_ns()
                    cur.execute(
                        "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent,"
                        " labels, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                        (ns, name, key, bkey, parent, json.dumps(lbls, sort_keys=True), ts, ts),
                    )
            except BaseException:
                try:
                    self._backend.remove(bkey)
                except Exception as exc:
                    log.error("failed to clean up unreferenced snapshot %s: %s", bkey, exc)
                raise
        self.owner._mutated()
        return mounts

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        if not name:
            raise errdefs.InvalidArgument("snapshot name must not be empty: invalid argument")
        lbls = {k: v for k, v in (labels or {}).items() if v}
        validate_labels(lbls)
        ns, sn = self.namespace, self.owner.name
        with self._lock(name, key), self.owner._gc_lock.shared():
            with self._db.tx() as cur:
                if self._row(cur, name) is not None:
                    raise errdefs.AlreadyExists(
                        f"snapshot {errdefs.go_quote(name)}: already exists"
                    )
                row = self._require(cur, key)
                self._check_lease(cur)
                name_key = self.owner._next_backend_key(cur, ns, name)
            try:
                self._backend.commit(name_key, row["backend_key"], labels=inherited_labels(lbls))
            except errdefs.FailedPrecondition:
                # Say it with the client's key, not the backend's.
                raise errdefs.FailedPrecondition(
                    f"snapshot {errdefs.go_quote(key)} is not active: failed precondition"
                ) from None
            try:
                with self._db.tx() as cur:
                    if self.lease is not None:
                        add_lease_resource(cur, ns, self.lease, _lease_type(sn), name)
                        remove_lease_resource(cur, ns, self.lease, _lease_type(sn), key)
                    ts = now_ns()
                    cur.execute(
                        "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent,"
                        " labels, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                        (
                            ns,
                            sn,
                            name,
                            name_key,
                            row["parent"],
                            json.dumps(lbls, sort_keys=True),
                            ts,
                            ts,
                        ),
                    )
                    cur.execute(
                        "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
                        (ns, sn, key),
                    )
            except BaseException:
                # The per-key locks make this near impossible (a lease deleted
                # mid-commit); the backend already renamed the snapshot, so the
                # record of ``key`` now points nowhere and GC will reclaim it.
                log.error(
                    "uncommittable snapshot: record update failed after backend commit",
                    extra={"fields": {"snapshotter": sn, "key": key, "name": name}},
                )
                raise
        self.owner._mutated()

    def remove(self, key: str) -> None:
        ns, sn = self.namespace, self.owner.name
        with self._lock(key), self.owner._gc_lock.shared():
            with self._db.tx() as cur:
                row = self._require(cur, key)
                child = cur.execute(
                    "SELECT 1 FROM snapshots WHERE namespace=? AND snapshotter=? AND parent=?"
                    " LIMIT 1",
                    (ns, sn, key),
                ).fetchone()
                if child is not None:
                    raise errdefs.FailedPrecondition(
                        "cannot remove snapshot with child: failed precondition"
                    )
                delete_record(cur, ns, sn, key)
                if self.lease is not None:
                    remove_lease_resource(cur, ns, self.lease, _lease_type(sn), key)
            # containerd leaves the backend to the next GC; removing it now
            # frees the disk at once and works with GC disabled. A failure
            # leaves an unreferenced backend snapshot that collect() reclaims.
            try:
                self._backend.remove(row["backend_key"])
            except errdefs.BerthError as exc:
                log.warning("backend removal of %s deferred to GC: %s", row["backend_key"], exc)
                if self.owner.collector is not None:
                    self.owner.collector.mark_dirty(SNAPSHOT)
        self.owner._mutated(deletion=True)

    def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        flt = _parse_filters(filters)
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? ORDER BY key",
                (self.namespace, self.owner.name),
            ).fetchall()
        # One backend scan instead of a stat per record.
        backend = {i.name: i for i in self._backend.walk()}
        out: list[Info] = []
        for row in rows:
            binfo = backend.get(row["backend_key"])
            if binfo is None:
                continue  # record without backend snapshot: GC's business
            info = self._merge(binfo, row)
            if flt.match(adapt_info(info)):
                out.append(info)
        return out

    def cleanup(self) -> None:
        self.owner.collect()


def _parse_filters(fs: Sequence[str]) -> filters.Filter:
    return filters.parse_all(list(fs))


class SnapshotKind:
    """Snapshots as a garbage-collection resource kind (see the module note)."""

    name = SNAPSHOT

    def __init__(self, snapshotters: Mapping[str, MetadataSnapshotter]) -> None:
        self.snapshotters = snapshotters
        self._dirty: set[str] = set()
        self._mu = threading.Lock()

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        for r in records(cur):
            if is_root(r.labels):
                yield Node(SNAPSHOT, r.namespace, f"{r.snapshotter}/{r.key}")

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterable[Node]:
        snapshotter, _, key = node.key.partition("/")
        row: Any = cur.execute(
            "SELECT parent, labels FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            (node.namespace, snapshotter, key),
        ).fetchone()
        if row is None:
            return []
        refs = list(label_refs(node.namespace, json.loads(row["labels"])))
        if row["parent"]:
            refs.append(Node(SNAPSHOT, node.namespace, f"{snapshotter}/{row['parent']}"))
        return refs

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        for r in records(cur):
            yield Node(SNAPSHOT, r.namespace, f"{r.snapshotter}/{r.key}")

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        snapshotter, _, key = node.key.partition("/")
        delete_record(cur, node.namespace, snapshotter, key)
        with self._mu:
            self._dirty.add(snapshotter)

    def cleanup(self) -> None:
        with self._mu:
            dirty, self._dirty = self._dirty, set()
        # A dirty mark from a failed eager removal names no snapshotter:
        # sweep them all then.
        names = dirty or set(self.snapshotters)
        for name in sorted(names):
            sn = self.snapshotters.get(name)
            if sn is not None:
                removed = sn.collect()
                if removed:
                    log.debug(
                        "collected snapshots",
                        extra={"fields": {"snapshotter": name, "removed": len(removed)}},
                    )
