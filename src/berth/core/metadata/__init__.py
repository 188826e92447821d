"""The embedded metadata store: namespaced records in SQLite, and GC over them.

This is Berth's equivalent of containerd's bolt database. One SQLite file in WAL
mode holds namespaces, content records and ingests, images, leases, and (as
later subsystems land) snapshots and containers. Every write runs in a
transaction, so a crash never leaves a half-written record.

Layering: ``db`` (connection, schema registry) < ``namespaces``, ``leases`` <
``gc`` (collector, scheduler, lease bookkeeping) < ``content``, ``images``
(stores plus their GC resource kinds) < ``plugin`` (assembles ``Metadata``).
"""

from berth.core.metadata import content as _content  # noqa: F401 - registers its tables
from berth.core.metadata import images as _images  # noqa: F401 - registers its tables
from berth.core.metadata import leases as _leases  # noqa: F401 - registers its tables
from berth.core.metadata.db import DB, NAMESPACED_TABLES, register_schema

__all__ = ["DB", "NAMESPACED_TABLES", "register_schema"]
