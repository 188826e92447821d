"""Leases: named, optionally expiring holds that keep resources from GC.

A lease owns a set of (type, id) resources: ``content`` digests, ``ingests``
refs and ``snapshots/<snapshotter>`` keys. Garbage collection treats every
resource of a live lease as a root; an expired lease (label
``containerd.io/gc.expire``) stops protecting anything.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from berth import errdefs, labels
from berth.core.metadata import namespaces as nsmod
from berth.core.metadata.db import DB, now_ns, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS leases (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE IF NOT EXISTS lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    );
    """,
    namespaced=(("leases", "leases"),),
)

EXPIRE_LABEL = "containerd.io/gc.expire"
_SNAPSHOT_TYPE = re.compile(r"^snapshots/[A-Za-z0-9._-]+$")


@dataclass
class Lease:
    id: str
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)


def validate_resource_type(rtype: str) -> None:
    if rtype in ("content", "ingests") or _SNAPSHOT_TYPE.match(rtype):
        return
    raise errdefs.InvalidArgument(
        f"unsupported resource type {errdefs.go_quote(rtype)}: use content, ingests or snapshots/<snapshotter>"
    )


def random_lease_id() -> str:
    """A fresh lease id in the shape containerd's clients and server generate."""
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


class LeaseStore:
    """Blocking lease operations; call from a thread (see ``DB.run``)."""

    def __init__(self, db: DB) -> None:
        self.db = db

    def create(self, namespace: str, lease_id: str, lbls: Mapping[str, str]) -> Lease:
        # containerd only requires a non-empty id: its clients generate ids such
        # as "506446372-w1Z_" (nanoseconds, "-", base64url) that the identifier
        # rules would reject about one time in eight.
        if not lease_id:
            raise errdefs.InvalidArgument("lease id must be provided")
        labels.validate(lbls)
        created = now_ns()
        with self.db.tx() as cur:
            nsmod.ensure(cur, namespace)
            try:
                cur.execute(
                    "INSERT INTO leases(namespace, id, labels, created_at) VALUES (?,?,?,?)",
                    (namespace, lease_id, json.dumps(dict(lbls), sort_keys=True), created),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(
                    f"lease {errdefs.go_quote(lease_id)}: already exists"
                ) from None
        return Lease(lease_id, created, dict(lbls))

    def delete(self, namespace: str, lease_id: str) -> None:
        with self.db.tx() as cur:
            cur.execute("DELETE FROM leases WHERE namespace=? AND id=?", (namespace, lease_id))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"lease {errdefs.go_quote(lease_id)}: not found")

    def list(self, namespace: str) -> list[Lease]:
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace=? ORDER BY id",
                (namespace,),
            ).fetchall()
        return [Lease(r["id"], r["created_at"], json.loads(r["labels"])) for r in rows]

    def _require(self, cur: sqlite3.Cursor, namespace: str, lease_id: str) -> None:
        row = cur.execute(
            "SELECT 1 FROM leases WHERE namespace=? AND id=?", (namespace, lease_id)
        ).fetchone()
        if row is None:
            raise errdefs.NotFound(f"lease {errdefs.go_quote(lease_id)}: not found")

    def add_resource(self, namespace: str, lease_id: str, rtype: str, rid: str) -> None:
        validate_resource_type(rtype)
        if not rid:
            raise errdefs.InvalidArgument("resource id must not be empty")
        with self.db.tx() as cur:
            self._require(cur, namespace, lease_id)
            cur.execute(
                "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, id) VALUES (?,?,?,?)",
                (namespace, lease_id, rtype, rid),
            )

    def delete_resource(self, namespace: str, lease_id: str, rtype: str, rid: str) -> None:
        validate_resource_type(rtype)
        with self.db.tx() as cur:
            self._require(cur, namespace, lease_id)
            cur.execute(
                "DELETE FROM lease_resources WHERE namespace=? AND lease=? AND type=? AND id=?",
                (namespace, lease_id, rtype, rid),
            )

    def list_resources(self, namespace: str, lease_id: str) -> builtins.list[tuple[str, str]]:
        with self.db.read() as cur:
            self._require(cur, namespace, lease_id)
            rows = cur.execute(
                "SELECT type, id FROM lease_resources WHERE namespace=? AND lease=? ORDER BY type, id",
                (namespace, lease_id),
            ).fetchall()
        return [(r["type"], r["id"]) for r in rows]
