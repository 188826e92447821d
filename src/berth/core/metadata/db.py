"""SQLite connection handling: schema, transactions, and off-loop execution.

SQLite is used from one connection guarded by a lock. The daemon's event loop
never blocks on it: async callers go through ``DB.run``, which runs the work on
a thread, or ``DB.query`` for keyed reads, which run inline only when the
connection is free. Each subsystem declares its tables with ``register_schema`` and says
whether they hold namespaced objects, so that namespace deletion can check for
emptiness across tables that did not exist when this module was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_SCHEMAS: list[str] = []
# (table, human name) pairs for namespace emptiness checks.
NAMESPACED_TABLES: list[tuple[str, str]] = []


def register_schema(sql: str, *, namespaced: tuple[tuple[str, str], ...] = ()) -> None:
    """Declare tables (idempotent ``CREATE ... IF NOT EXISTS`` statements).

    ``namespaced`` lists (table, kind) pairs whose rows carry a ``namespace``
    column; a namespace with rows in any of them cannot be deleted.
    """
    _SCHEMAS.append(sql)
    for entry in namespaced:
        if entry not in NAMESPACED_TABLES:
            NAMESPACED_TABLES.append(entry)


register_schema(
    """
    CREATE TABLE IF NOT EXISTS namespaces (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL
    );
    """
)


def now_ns() -> int:
    return time.time_ns()


class DB:
    """One SQLite database file with serialized, transactional access."""

    def __init__(self, path: Path, *, schemas: Sequence[str] | None = None) -> None:
        """Open (creating) ``path`` and apply ``schemas``.

        ``schemas`` defaults to every schema declared with ``register_schema``;
        a store that keeps its own private file (a snapshotter's) passes its own.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._schemas = list(_SCHEMAS) if schemas is None else list(schemas)
        # check_same_thread=False: access is serialized by self._lock instead,
        # so executor threads can share the one connection.
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against application crashes in WAL mode; FULL is
            # only needed against power loss, at a large cost per commit.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._migrate()

    def _migrate(self) -> None:
        with self.tx() as cur:
            for sql in self._schemas:
                # executescript() would commit implicitly; run statements one by one
                # so that the whole migration is one transaction.
                for stmt in (s.strip() for s in sql.split(";")):
                    if stmt:
                        cur.execute(stmt)

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        """A consistent read (a deferred transaction)."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")
                cur.close()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run blocking database work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def query(self, fn: Callable[[], T]) -> T:
        """Run a short read (a lookup by key) — inline when the connection is free.

        A keyed read of this small, hot database takes tens of microseconds,
        several times less than handing it to a thread and back, and the hot
        request paths (``ctr run`` makes some twenty such reads) pay that
        hand-off on every call. When another thread holds the connection the
        loop must not wait for it, so the read goes to a thread as ``run``
        does. ``fn`` must only read the database: no file I/O, no writes.
        """
        if self._lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self._lock.release()
        return await self.run(fn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
