"""Namespaced content: blob records and ingests per namespace over one blob store.

Design notes
------------
Blobs live once, in the backend :class:`~berth.core.content.LocalStore`
(``<root>/io.containerd.content.v1.content/blobs``). What a namespace *has* is a
row in the ``content`` table (digest, size, labels, times); what it is
*writing* is a row in ``ingests`` that maps the client's ref to a backend ref
(``bref``) unique to that namespace, so two namespaces using the same ref never
share an ingest. Deleting content removes the row only; the file goes when a
collection finds no namespace, ingest or lease that still needs it.

``content_sharing_policy``:

* ``shared``: a writer that announces an ``expected`` digest the backend
  already holds (with a matching size, when one is given) needs no data: the
  ingest records the expected digest and commit just adds the row. This is how
  a second namespace pulls an image without downloading it again.
* ``isolated``: the bytes must be written in full before the namespace gets a
  row, so a namespace cannot learn what others hold.

Concurrency: opening writers, committing, deleting and aborting hold a shared
lock; the backend sweep of a collection holds it exclusively. That keeps a
blob from being swept between its commit into the backend and the creation of
its row (both happen in one database transaction under the shared lock).

Leases: every call that creates something takes ``lease`` (the request's
``containerd-lease``). The ingest and, after commit, the content become
resources of that lease; ingests without a lease instead expire after a day.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from berth import errdefs, filters, labels
from berth.core.content import Digest, Info, LocalStore, ReaderAt, Status, Writer
from berth.core.metadata import namespaces as nsmod
from berth.core.metadata.db import DB, now_ns, register_schema
from berth.core.metadata.gc import (
    CONTENT,
    INGEST,
    Collector,
    Node,
    add_lease_resource,
    is_root,
    label_refs,
    load_labels,
    remove_lease_resource,
)

log = logging.getLogger("berth.content")

register_schema(
    """
    CREATE TABLE IF NOT EXISTS content (
        namespace TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest)
    );
    CREATE TABLE IF NOT EXISTS ingests (
        namespace TEXT NOT NULL,
        ref TEXT NOT NULL,
        bref TEXT NOT NULL,
        expected TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL DEFAULT 0,
        expire_at INTEGER,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, ref)
    );
    """,
    namespaced=(("content", "blobs"),),
)

#: How long an ingest made without a lease survives before GC aborts it.
INGEST_EXPIRY = timedelta(hours=24)


def _dt(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)


def _parse_digest(value: Digest | str) -> Digest:
    return Digest.parse(value)


def info_adaptor(info: Info) -> filters.Adaptor:
    """Filter fields of content, as containerd's: ``digest`` and ``labels.<key>``.

    containerd accepts ``size`` as a field but never matches it; so does this.
    """
    return filters.adapt_mapping({"digest": (str(info.digest), True)}, labels=info.labels)


def status_adaptor(status: Status) -> filters.Adaptor:
    """Filter fields of an ingest status: only ``ref``, as in containerd."""
    return filters.adapt_mapping({"ref": (status.ref, True)})


class _SharedLock:
    """Many shared holders or one exclusive holder (writers vs. the sweep)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True  # blocks new shared holders from here on
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _row_info(row: sqlite3.Row) -> Info:
    return Info(
        digest=Digest.parse(row["digest"]),
        size=row["size"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
        labels=load_labels(row["labels"]),
    )


@dataclass
class SweepResult:
    blobs: int = 0
    ingests: int = 0


class ContentStore:
    """Blocking, namespaced content operations; call from a thread (``DB.run``).

    ``collector`` (optional) is told about writes and deletions so the GC
    scheduler can react; without it the store works the same, minus GC.
    """

    def __init__(
        self,
        db: DB,
        backend: LocalStore,
        *,
        shared: bool = True,
        collector: Collector | None = None,
    ) -> None:
        self.db = db
        self.backend = backend
        self.shared = shared
        self._collector = collector
        self._lock = _SharedLock()
        # A freshly opened store may hold leftovers from before a crash.
        self._backend_dirty = True
        self._dirty_mu = threading.Lock()
        if collector is not None:
            collector.mark_dirty(CONTENT)

    # -- notifications -------------------------------------------------------

    def _mutated(self, *, deletion: bool = False) -> None:
        if deletion:
            with self._dirty_mu:
                self._backend_dirty = True
            if self._collector is not None:
                self._collector.mark_dirty(CONTENT)
        if self._collector is not None:
            self._collector.mutated(deletion=deletion)

    def mark_backend_dirty(self) -> None:
        with self._dirty_mu:
            self._backend_dirty = True

    # -- blobs ---------------------------------------------------------------

    def info(self, namespace: str, digest: Digest | str) -> Info:
        """The namespace's record of ``digest``. NotFound if it has none."""
        d = _parse_digest(digest)
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT * FROM content WHERE namespace=? AND digest=?", (namespace, str(d))
            ).fetchone()
        if row is None:
            raise errdefs.NotFound(f"content digest {d}: not found")
        return _row_info(row)

    def update(
        self,
        namespace: str,
        digest: Digest | str,
        lbls: Mapping[str, str],
        fieldpaths: Sequence[str] = (),
    ) -> Info:
        """Change labels: all of them (no paths, or ``labels``) or ``labels.<key>``.

        An empty value for ``labels.<key>`` removes the key. Raises NotFound,
        InvalidArgument for another path or an invalid label.
        """
        d = _parse_digest(digest)
        with self._lock.shared(), self.db.tx() as cur:
            row = cur.execute(
                "SELECT * FROM content WHERE namespace=? AND digest=?", (namespace, str(d))
            ).fetchone()
            if row is None:
                raise errdefs.NotFound(f"content digest {d}: not found")
            current = load_labels(row["labels"])
            if not fieldpaths:
                current = dict(lbls)
            for path in fieldpaths:
                if path.startswith("labels."):
                    key = path.removeprefix("labels.")
                    value = lbls.get(key, "")
                    if value:
                        current[key] = value
                    else:
                        current.pop(key, None)
                elif path == "labels":
                    current = dict(lbls)
                else:
                    raise errdefs.InvalidArgument(
                        f'cannot update "{path}" field on content info "{d}"'
                    )
            current = {k: v for k, v in current.items() if v}
            try:
                labels.validate(current)
            except errdefs.InvalidArgument as exc:
                raise errdefs.InvalidArgument(f"info.Labels: {exc}") from None
            updated = now_ns()
            cur.execute(
                "UPDATE content SET labels=?, updated_at=? WHERE namespace=? AND digest=?",
                (json.dumps(current, sort_keys=True), updated, namespace, str(d)),
            )
            info = Info(d, row["size"], _dt(row["created_at"]), _dt(updated), current)
        self._mutated()
        return info

    def list(self, namespace: str, filter_strings: Sequence[str] = ()) -> list[Info]:
        """Records of the namespace matching any filter, in digest order.

        Raises InvalidArgument for a malformed filter.
        """
        flt = filters.parse_all(list(filter_strings))
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT * FROM content WHERE namespace=? ORDER BY digest", (namespace,)
            ).fetchall()
        infos = []
        for row in rows:
            try:
                info = _row_info(row)
            except errdefs.InvalidArgument:
                continue  # not a digest we understand: never written by us
            if flt.match(info_adaptor(info)):
                infos.append(info)
        return infos

    def walk(
        self, namespace: str, fn: Callable[[Info], None], filter_strings: Sequence[str] = ()
    ) -> None:
        for info in self.list(namespace, filter_strings):
            fn(info)

    def delete(self, namespace: str, digest: Digest | str, *, lease: str | None = None) -> None:
        """Remove the namespace's record; the blob file goes at the next GC.

        Raises NotFound if the namespace has no such content.
        """
        d = _parse_digest(digest)
        with self._lock.shared(), self.db.tx() as cur:
            cur.execute("DELETE FROM content WHERE namespace=? AND digest=?", (namespace, str(d)))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"content digest {d}: not found")
            if lease:
                remove_lease_resource(cur, namespace, lease, "content", str(d))
        self._mutated(deletion=True)

    def reader_at(self, namespace: str, digest: Digest | str) -> ReaderAt:
        """Open a blob the namespace has. NotFound otherwise. Caller closes it."""
        d = _parse_digest(digest)
        self._check_access(namespace, d)
        return self.backend.reader_at(d)

    def _check_access(self, namespace: str, d: Digest) -> None:
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT 1 FROM content WHERE namespace=? AND digest=?", (namespace, str(d))
            ).fetchone()
        if row is None:
            raise errdefs.NotFound(f"content digest {d}: not found")

    # -- ingests -------------------------------------------------------------

    def _ingest_row(self, cur: sqlite3.Cursor, namespace: str, ref: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = cur.execute(
            "SELECT * FROM ingests WHERE namespace=? AND ref=?", (namespace, ref)
        ).fetchone()
        return row

    def status(self, namespace: str, ref: str) -> Status:
        """Progress of the namespace's ingest ``ref``. NotFound if none."""
        with self.db.read() as cur:
            row = self._ingest_row(cur, namespace, ref)
        if row is None:
            raise errdefs.NotFound(f"reference {ref}: not found")
        st = self.backend.status(row["bref"])
        return _rename(st, ref)

    def list_statuses(
        self, namespace: str, filter_strings: Sequence[str] = ()
    ) -> builtins.list[Status]:
        """Statuses of the namespace's ingests matching any filter (``ref``)."""
        flt = filters.parse_all(list(filter_strings))
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT ref, bref FROM ingests WHERE namespace=? ORDER BY ref", (namespace,)
            ).fetchall()
        out = []
        for row in rows:
            try:
                st = _rename(self.backend.status(row["bref"]), row["ref"])
            except errdefs.NotFound:
                continue  # shared ingests have no backend data; neither do aborted ones
            if flt.match(status_adaptor(st)):
                out.append(st)
        return out

    def abort(self, namespace: str, ref: str, *, lease: str | None = None) -> None:
        """Discard the namespace's ingest ``ref`` and its data. NotFound if none."""
        with self._lock.shared(), self.db.tx() as cur:
            row = self._ingest_row(cur, namespace, ref)
            if row is None:
                raise errdefs.NotFound(f"reference {ref}: not found")
            cur.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (namespace, ref))
            if lease:
                remove_lease_resource(cur, namespace, lease, "ingests", ref)
            if not row["expected"]:
                # Only private ingests have backend data; a shared one points
                # at a blob that other namespaces still own.
                with contextlib.suppress(errdefs.NotFound):
                    self.backend.abort(row["bref"])
        self._mutated(deletion=True)

    def writer(
        self,
        namespace: str,
        ref: str,
        *,
        total: int = 0,
        expected: Digest | str | None = None,
        lease: str | None = None,
    ) -> NamespacedWriter:
        """Start or resume the namespace's ingest ``ref`` and lock it.

        Raises:
            InvalidArgument: empty ref, bad digest.
            AlreadyExists: the namespace already has ``expected`` (it is added
                to ``lease`` first, so the caller's lease protects it).
            Unavailable: another writer holds the ref.
            NotFound: ``lease`` does not exist.
        """
        if not ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        want = _parse_digest(expected) if expected else None
        total = max(total, 0)
        exists = False
        shared = False
        w: Writer | None = None
        bref = ""
        with self._lock.shared():
            with self.db.tx() as cur:
                nsmod.ensure(cur, namespace)
                if want is not None:
                    row = cur.execute(
                        "SELECT 1 FROM content WHERE namespace=? AND digest=?",
                        (namespace, str(want)),
                    ).fetchone()
                    if row is not None:
                        if lease:
                            add_lease_resource(cur, namespace, lease, "content", str(want))
                        exists = True
                    elif self.shared:
                        with contextlib.suppress(errdefs.NotFound):
                            size = self.backend.info(want).size
                            if total in (0, size):
                                shared = True
                                total = size
                if not exists:
                    w, bref = self._open_ingest(cur, namespace, ref, total, want, shared, lease)
            if exists:
                raise errdefs.AlreadyExists(f"content {want}: already exists")
        self._mutated()
        return NamespacedWriter(
            self,
            namespace=namespace,
            ref=ref,
            bref=bref,
            writer=w,
            total=total,
            expected=want if shared else None,
            lease=lease,
        )

    def _open_ingest(
        self,
        cur: sqlite3.Cursor,
        namespace: str,
        ref: str,
        total: int,
        want: Digest | None,
        shared: bool,
        lease: str | None,
    ) -> tuple[Writer | None, str]:
        row = self._ingest_row(cur, namespace, ref)
        now = now_ns()
        if row is None:
            bref = f"{namespace}/{secrets.token_hex(8)}/{ref}"
            cur.execute(
                "INSERT INTO ingests(namespace, ref, bref, created_at) VALUES (?,?,?,?)",
                (namespace, ref, bref, now),
            )
        else:
            bref = row["bref"]
        if lease:
            add_lease_resource(cur, namespace, lease, "ingests", ref)
            expire_at = None
        else:
            # Without a lease, the ingest must not live for ever: GC aborts
            # it once this passes.
            expire_at = now + int(INGEST_EXPIRY.total_seconds() * 1e9)
        cur.execute(
            "UPDATE ingests SET expire_at=?, expected=?, size=? WHERE namespace=? AND ref=?",
            (expire_at, str(want) if shared else "", total if shared else 0, namespace, ref),
        )
        if shared:
            return None, bref
        # The expected digest is deliberately not passed down: it was checked
        # against this namespace above, and the backend would otherwise reveal
        # that another namespace holds it. Commit verifies it instead.
        return self.backend.open_writer(bref, total=total), bref

    # -- commit (called by NamespacedWriter) --------------------------------

    def _commit(
        self,
        nw: NamespacedWriter,
        size: int,
        expected: Digest | None,
        lbls: Mapping[str, str] | None,
    ) -> Digest:
        base = {k: v for k, v in (lbls or {}).items()}
        inner: errdefs.AlreadyExists | None = None
        with self._lock.shared():
            try:
                labels.validate(base)
            except errdefs.InvalidArgument as exc:
                nw.close()
                raise errdefs.InvalidArgument(f"info.Labels: {exc}") from None
            with self.db.tx() as cur:
                w = nw.backend_writer
                if w is None:
                    assert nw.expected is not None
                    if size and size != nw.total:
                        raise errdefs.FailedPrecondition(
                            f"{errdefs.go_quote(nw.ref)} failed size validation: {nw.total} != {size}"
                        )
                    if expected is not None and expected != nw.expected:
                        raise errdefs.FailedPrecondition(
                            f"{errdefs.go_quote(nw.ref)} unexpected digest"
                        )
                    size = nw.total
                    actual = nw.expected
                else:
                    offset = w.status().offset
                    if size and size != offset:
                        w.close()
                        raise errdefs.FailedPrecondition(
                            f"{errdefs.go_quote(nw.ref)} failed size validation: {offset} != {size}"
                        )
                    size = offset
                    try:
                        actual = w.commit(size, expected)
                    except errdefs.AlreadyExists:
                        # Another namespace (isolated policy) already owns the
                        # bytes; the commit still verified them.
                        actual = expected if expected is not None else w.digest()
                now = now_ns()
                try:
                    cur.execute(
                        "INSERT INTO content(namespace, digest, size, labels, created_at,"
                        " updated_at) VALUES (?,?,?,?,?,?)",
                        (
                            nw.namespace,
                            str(actual),
                            size,
                            json.dumps(base, sort_keys=True),
                            now,
                            now,
                        ),
                    )
                except sqlite3.IntegrityError:
                    inner = errdefs.AlreadyExists(f"content {actual}: already exists")
                cur.execute(
                    "DELETE FROM ingests WHERE namespace=? AND ref=?", (nw.namespace, nw.ref)
                )
                if nw.lease:
                    remove_lease_resource(cur, nw.namespace, nw.lease, "ingests", nw.ref)
                    add_lease_resource(cur, nw.namespace, nw.lease, "content", str(actual))
        self._mutated()
        if inner is not None:
            raise inner
        return actual

    # -- GC support ------------------------------------------------------------

    def sweep_backend(self, *, force: bool = False) -> SweepResult:
        """Delete blob files and backend ingests that no namespace references.

        Only does work when something was deleted since the last sweep (or
        ``force``). Holds the exclusive lock, so no commit interleaves.
        """
        result = SweepResult()
        with self._dirty_mu:
            if not (self._backend_dirty or force):
                return result
            self._backend_dirty = False
        try:
            with self._lock.exclusive():
                with self.db.read() as cur:
                    seen = {r[0] for r in cur.execute("SELECT DISTINCT digest FROM content")}
                    seen.update(
                        r[0]
                        for r in cur.execute(
                            "SELECT DISTINCT expected FROM ingests WHERE expected != ''"
                        )
                    )
                    brefs = {r[0] for r in cur.execute("SELECT bref FROM ingests")}
                doomed: builtins.list[Digest] = []
                self.backend.walk(
                    lambda info: None if str(info.digest) in seen else doomed.append(info.digest)
                )
                for d in doomed:
                    with contextlib.suppress(errdefs.NotFound):
                        self.backend.delete(d)
                        result.blobs += 1
                        log.debug("removed content", extra={"fields": {"digest": str(d)}})
                for st in self.backend.list_statuses():
                    if st.ref not in brefs:
                        with contextlib.suppress(errdefs.NotFound):
                            self.backend.abort(st.ref)
                            result.ingests += 1
                            log.debug("cleanup aborting ingest", extra={"fields": {"ref": st.ref}})
        except BaseException:
            self.mark_backend_dirty()
            raise
        return result


def _rename(st: Status, ref: str) -> Status:
    return Status(
        ref=ref,
        offset=st.offset,
        total=st.total,
        expected=st.expected,
        started_at=st.started_at,
        updated_at=st.updated_at,
    )


class NamespacedWriter:
    """A namespace's handle on one ingest (see :meth:`ContentStore.writer`).

    In the shared case (no ``backend_writer``) the ingest is satisfied by a
    blob already in the backend; writing data first copies that blob into a
    private ingest, so a client that insists on uploading still can.
    """

    def __init__(
        self,
        store: ContentStore,
        *,
        namespace: str,
        ref: str,
        bref: str,
        writer: Writer | None,
        total: int,
        expected: Digest | None,
        lease: str | None,
    ) -> None:
        self._store = store
        self.namespace = namespace
        self.ref = ref
        self.bref = bref
        self.backend_writer = writer
        self.total = total
        self.expected = expected
        self.lease = lease
        self._started = datetime.now(UTC)

    def _unshare(self, size: int) -> Writer:
        """Turn a shared ingest into a private one holding ``size`` bytes of the blob."""
        backend = self._store.backend
        w = backend.open_writer(self.bref, total=0)
        try:
            if size > 0 and self.expected is not None:
                with backend.reader_at(self.expected) as ra:
                    for chunk in ra.iter_chunks(0, size):
                        w.write(chunk)
        except BaseException:
            w.close()
            raise
        self.backend_writer = w
        self.expected = None
        with self._store.db.tx() as cur:
            cur.execute(
                "UPDATE ingests SET expected='', size=0 WHERE namespace=? AND ref=?",
                (self.namespace, self.ref),
            )
        return w

    def write(self, data: bytes | bytearray | memoryview) -> int:
        w = self.backend_writer
        if w is None:
            if not data:
                return 0
            w = self._unshare(self.total)
        return w.write(data)

    def truncate(self, size: int) -> None:
        w = self.backend_writer
        if w is None:
            self._unshare(size)
            return
        w.truncate(size)

    def digest(self) -> Digest:
        w = self.backend_writer
        if w is not None:
            return w.digest()
        assert self.expected is not None
        return self.expected

    def status(self) -> Status:
        w = self.backend_writer
        if w is not None:
            return _rename(w.status(), self.ref)
        return Status(
            ref=self.ref,
            offset=self.total,
            total=self.total,
            expected=self.expected,
            started_at=self._started,
            updated_at=self._started,
        )

    def commit(
        self,
        size: int = 0,
        expected: Digest | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:
        """Verify and publish into the namespace; see :meth:`Writer.commit`.

        Raises FailedPrecondition on a size or digest mismatch (nothing is
        committed and the ingest stays), AlreadyExists if the namespace
        already had it (the ingest is consumed), InvalidArgument for bad
        labels or digest.
        """
        want = _parse_digest(expected) if expected else None
        return self._store._commit(self, size, want, labels)

    def close(self) -> None:
        """Release the ref; the ingest stays for resumption."""
        w = self.backend_writer
        if w is not None:
            w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ContentKind:
    """Content records in the GC graph: label edges, ``gc.root``, backend sweep."""

    name = CONTENT

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        for row in cur.execute(
            "SELECT namespace, digest, labels FROM content WHERE labels LIKE '%containerd.io/gc.root%'"
        ).fetchall():
            if is_root(load_labels(row["labels"])):
                yield Node(CONTENT, row["namespace"], row["digest"])

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterator[Node]:
        row = cur.execute(
            "SELECT labels FROM content WHERE namespace=? AND digest=?", (node.namespace, node.key)
        ).fetchone()
        if row is not None:
            yield from label_refs(node.namespace, load_labels(row["labels"]))

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        for row in cur.execute("SELECT namespace, digest FROM content").fetchall():
            yield Node(CONTENT, row["namespace"], row["digest"])

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        log.debug("remove content", extra={"fields": {"key": node.key}})
        cur.execute(
            "DELETE FROM content WHERE namespace=? AND digest=?", (node.namespace, node.key)
        )
        self.store.mark_backend_dirty()

    def cleanup(self) -> None:
        self.store.sweep_backend()


class IngestKind:
    """Ingest records: roots until they expire (unless a lease holds them)."""

    name = INGEST

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        threshold = int(now.timestamp() * 1e9)
        for row in cur.execute(
            "SELECT namespace, ref FROM ingests WHERE expire_at IS NOT NULL AND expire_at > ?",
            (threshold,),
        ).fetchall():
            yield Node(INGEST, row["namespace"], row["ref"])

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterator[Node]:
        row = cur.execute(
            "SELECT expected FROM ingests WHERE namespace=? AND ref=?", (node.namespace, node.key)
        ).fetchone()
        if row is not None and row["expected"]:
            # A shared ingest keeps the blob it points at, which may belong
            # to another namespace that deletes it meanwhile.
            yield Node(CONTENT, node.namespace, row["expected"])

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        for row in cur.execute("SELECT namespace, ref FROM ingests").fetchall():
            yield Node(INGEST, row["namespace"], row["ref"])

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        log.debug("remove ingest", extra={"fields": {"ref": node.key}})
        cur.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (node.namespace, node.key))
        self.store.mark_backend_dirty()

    def cleanup(self) -> None:
        self.store.sweep_backend()
