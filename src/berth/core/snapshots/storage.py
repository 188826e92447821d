"""The record store backend snapshotters keep beside their trees.

Each backend (overlayfs, native) owns one SQLite file, ``<root>/metadata.db``,
holding its snapshots by key with a numeric id (the directory name on disk),
kind, parent link, labels, timestamps and, once committed, usage. It knows
nothing of namespaces: ``berth.core.snapshots.metadata`` maps namespaced keys
onto these. Ids come from AUTOINCREMENT so a removed snapshot's id, whose
directory may still await cleanup, is never handed out again.

All functions taking a cursor run inside the caller's transaction, so a
backend can pair a record change with a directory rename atomically.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from berth import errdefs, filters
from berth.core.metadata.db import DB
from berth.core.snapshots import Info, Kind, Usage, adapt_info, apply_label_update

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    parent INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


@dataclass
class Snapshot:
    """What a backend needs to build mounts: its id, kind and parent ids
    (nearest parent first)."""

    id: str
    kind: Kind
    parent_ids: list[str] = field(default_factory=list)


class MetaStore(DB):
    """One SQLite file with serialized transactions (blocking; use threads).

    The snapshotter keeps its own file, so it opens the shared ``DB`` machinery
    with only its own schema.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, schemas=(_SCHEMA,))


def _now() -> int:
    return time.time_ns()


_SELECT = """
SELECT s.id, s.key, s.kind, s.labels, s.created, s.updated, s.size, s.inodes,
       COALESCE(p.key, '') AS parent_key, s.parent AS parent_id
FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent
"""


def _info(row: sqlite3.Row) -> Info:
    return Info(
        name=row["key"],
        kind=Kind(row["kind"]),
        parent=row["parent_key"],
        labels=json.loads(row["labels"]),
        created=row["created"],
        updated=row["updated"],
    )


def _row(cur: sqlite3.Cursor, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = cur.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
    return row


def _parent_chain(cur: sqlite3.Cursor, parent_id: int) -> list[str]:
    rows = cur.execute(
        """
        WITH RECURSIVE chain(id, parent, depth) AS (
            SELECT id, parent, 0 FROM snapshots WHERE id = ?
            UNION ALL
            SELECT s.id, s.parent, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent
        )
        SELECT id FROM chain ORDER BY depth
        """,
        (parent_id,),
    ).fetchall()
    return [str(r["id"]) for r in rows]


def get_info(cur: sqlite3.Cursor, key: str) -> tuple[str, Info, Usage]:
    """(id, info, stored usage) of ``key``. Raises NotFound."""
    row = _row(cur, key)
    if row is None:
        raise errdefs.NotFound(f"snapshot {key} does not exist: not found")
    return str(row["id"]), _info(row), Usage(row["size"], row["inodes"])


def get_snapshot(cur: sqlite3.Cursor, key: str) -> Snapshot:
    """The mountable view of active or view snapshot ``key``.

    Raises NotFound, FailedPrecondition (committed snapshots have no mounts).
    """
    row = _row(cur, key)
    if row is None:
        raise errdefs.NotFound(f"snapshot {key} does not exist: not found")
    kind = Kind(row["kind"])
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise errdefs.FailedPrecondition(
            f"requested snapshot {key} not active or view: failed precondition"
        )
    parents = _parent_chain(cur, row["parent_id"]) if row["parent_id"] is not None else []
    return Snapshot(str(row["id"]), kind, parents)


def parent_id(cur: sqlite3.Cursor, parent: str) -> str:
    """Id of committed snapshot ``parent``. Raises NotFound, InvalidArgument."""
    row = _row(cur, parent)
    if row is None:
        raise errdefs.NotFound(f"parent snapshot {parent} does not exist: not found")
    if Kind(row["kind"]) is not Kind.COMMITTED:
        raise errdefs.InvalidArgument(
            f"parent {errdefs.go_quote(parent)} is not committed snapshot: invalid argument"
        )
    return str(row["id"])


def create(
    cur: sqlite3.Cursor,
    kind: Kind,
    key: str,
    parent: str,
    labels: Mapping[str, str],
) -> Snapshot:
    """Insert an active or view record. Raises InvalidArgument (kind, parent not
    committed), NotFound (parent), AlreadyExists (key)."""
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise errdefs.InvalidArgument(
            f"snapshot type {kind} invalid; only snapshots of type Active or View can be created"
        )
    if not key:
        raise errdefs.InvalidArgument("snapshot key must not be empty")
    pid = parent_id(cur, parent) if parent else None
    ts = _now()
    try:
        cur.execute(
            "INSERT INTO snapshots(key, kind, parent, labels, created, updated)"
            " VALUES (?,?,?,?,?,?)",
            (key, int(kind), pid, json.dumps(dict(labels), sort_keys=True), ts, ts),
        )
    except sqlite3.IntegrityError:
        raise errdefs.AlreadyExists(f"snapshot {key}: already exists") from None
    new_id = cur.lastrowid
    parents = _parent_chain(cur, int(pid)) if pid is not None else []
    return Snapshot(str(new_id), kind, parents)


def remove(cur: sqlite3.Cursor, key: str) -> tuple[str, Kind]:
    """Delete ``key``'s record; return (id, kind).

    Raises NotFound, FailedPrecondition ("cannot remove snapshot with child").
    """
    row = _row(cur, key)
    if row is None:
        raise errdefs.NotFound(f"snapshot {key} does not exist: not found")
    child = cur.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (row["id"],)).fetchone()
    if child is not None:
        raise errdefs.FailedPrecondition("cannot remove snapshot with child: failed precondition")
    cur.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
    return str(row["id"]), Kind(row["kind"])


def commit_active(
    cur: sqlite3.Cursor,
    key: str,
    name: str,
    usage: Usage,
    labels: Mapping[str, str],
) -> str:
    """Rename active ``key`` to committed ``name`` in place (same id, so the
    directory stays put); labels are replaced, not inherited.

    Raises AlreadyExists (name), NotFound (key), FailedPrecondition (not active).
    """
    if not name:
        raise errdefs.InvalidArgument("snapshot name must not be empty")
    if _row(cur, name) is not None:
        raise errdefs.AlreadyExists(f"committed snapshot {name}: already exists")
    row = _row(cur, key)
    if row is None:
        raise errdefs.NotFound(f"failed to get active snapshot {errdefs.go_quote(key)}: not found")
    if Kind(row["kind"]) is not Kind.ACTIVE:
        raise errdefs.FailedPrecondition(
            f"snapshot {errdefs.go_quote(key)} is not active: failed precondition"
        )
    ts = _now()
    cur.execute(
        "UPDATE snapshots SET key=?, kind=?, labels=?, created=?, updated=?, size=?, inodes=?"
        " WHERE id=?",
        (
            name,
            int(Kind.COMMITTED),
            json.dumps(dict(labels), sort_keys=True),
            ts,
            ts,
            usage.size,
            usage.inodes,
            row["id"],
        ),
    )
    return str(row["id"])


def update_info(cur: sqlite3.Cursor, info: Info, fieldpaths: Sequence[str]) -> Info:
    """Apply a label update (see ``apply_label_update``). Raises NotFound,
    InvalidArgument."""
    row = _row(cur, info.name)
    if row is None:
        raise errdefs.NotFound(f"snapshot {info.name} does not exist: not found")
    current = _info(row)
    current.labels = apply_label_update(current.labels, info, fieldpaths)
    current.updated = _now()
    cur.execute(
        "UPDATE snapshots SET labels=?, updated=? WHERE id=?",
        (json.dumps(current.labels, sort_keys=True), current.updated, row["id"]),
    )
    return current


def walk_info(cur: sqlite3.Cursor, filter_strings: Sequence[str] = ()) -> list[Info]:
    """All records matching the filters, in key order. Raises InvalidArgument."""
    flt = filters.parse_all(list(filter_strings))
    rows = cur.execute(_SELECT + " ORDER BY s.key").fetchall()
    return [info for info in map(_info, rows) if flt.match(adapt_info(info))]


def id_map(cur: sqlite3.Cursor) -> dict[str, str]:
    """id -> key for every record (what ``cleanup`` must keep)."""
    return {str(r["id"]): r["key"] for r in cur.execute("SELECT id, key FROM snapshots")}
