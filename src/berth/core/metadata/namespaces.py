"""Namespaces: creation, labels, and deletion only when empty."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from berth import errdefs, identifiers, labels
from berth.core.metadata.db import DB, NAMESPACED_TABLES, now_ns


def ensure(cur: sqlite3.Cursor, name: str) -> None:
    """Create namespace ``name`` inside an open transaction if it is missing.

    Objects created in an unknown namespace bring it into existence, as in
    containerd, so ``ctr -n new images pull`` needs no separate step.
    """
    cur.execute(
        "INSERT OR IGNORE INTO namespaces(name, labels, created_at) VALUES (?, '{}', ?)",
        (name, now_ns()),
    )


class NamespaceStore:
    """Blocking namespace operations; call from a thread (see ``DB.run``)."""

    def __init__(self, db: DB) -> None:
        self.db = db

    def create(self, name: str, lbls: Mapping[str, str]) -> None:
        identifiers.validate(name)
        labels.validate(lbls)
        with self.db.tx() as cur:
            try:
                cur.execute(
                    "INSERT INTO namespaces(name, labels, created_at) VALUES (?, ?, ?)",
                    (name, json.dumps(dict(lbls), sort_keys=True), now_ns()),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(
                    f"namespace {errdefs.go_quote(name)}: already exists"
                ) from None

    def labels(self, name: str) -> dict[str, str]:
        with self.db.read() as cur:
            row = cur.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"namespace {errdefs.go_quote(name)}: not found")
        result: dict[str, str] = json.loads(row["labels"])
        return result

    def list(self) -> list[tuple[str, dict[str, str]]]:
        with self.db.read() as cur:
            rows = cur.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
        return [(r["name"], json.loads(r["labels"])) for r in rows]

    def set_labels(self, name: str, lbls: Mapping[str, str], *, replace: bool) -> dict[str, str]:
        """Merge (or, with ``replace``, overwrite) labels; an empty value deletes a key."""
        labels.validate({k: v for k, v in lbls.items() if v})
        with self.db.tx() as cur:
            row = cur.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"namespace {errdefs.go_quote(name)}: not found")
            current: dict[str, str] = {} if replace else json.loads(row["labels"])
            for k, v in lbls.items():
                if v:
                    current[k] = v
                else:
                    current.pop(k, None)
            cur.execute(
                "UPDATE namespaces SET labels=? WHERE name=?",
                (json.dumps(current, sort_keys=True), name),
            )
        return current

    def delete(self, name: str) -> None:
        with self.db.tx() as cur:
            row = cur.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"namespace {errdefs.go_quote(name)}: not found")
            in_use = [
                kind
                for table, kind in NAMESPACED_TABLES
                if cur.execute(
                    f"SELECT 1 FROM {table} WHERE namespace=? LIMIT 1", (name,)
                ).fetchone()
            ]
            if in_use:
                raise errdefs.FailedPrecondition(
                    f"namespace {errdefs.go_quote(name)} must be empty, but it still has {', '.join(in_use)}"
                )
            cur.execute("DELETE FROM namespaces WHERE name=?", (name,))
