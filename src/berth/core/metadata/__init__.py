"""The embedded metadata store: namespaced records in SQLite, and GC over them.

This is Berth's equivalent of containerd's bolt database. One SQLite file in WAL
mode holds namespaces, and (as later subsystems land) content records, images,
leases, snapshots and containers. Every write runs in a transaction, so a crash
never leaves a half-written record.
"""

from berth.core.metadata import leases as _leases  # noqa: F401 - registers its tables
from berth.core.metadata.db import DB, NAMESPACED_TABLES, register_schema

__all__ = ["DB", "NAMESPACED_TABLES", "register_schema"]
