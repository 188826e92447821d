"""Value types exchanged with the content store: Descriptor, Info, Status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from berth.core.content.digest import Digest


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI descriptor: what a blob is, how big, and how to verify it.

    ``size`` of 0 or less means "unknown" where the store accepts a
    descriptor as an expectation, matching containerd.
    """

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Info:
    """Facts about a committed blob.

    ``created_at`` is the commit time (the blob's mtime) and ``updated_at`` the
    last label update (its atime), as containerd's local store reports them.
    ``labels`` is empty unless the store was given a label store; containerd
    keeps labels in its metadata database, which wraps the store.
    """

    digest: Digest
    size: int
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    """Progress of an ingest (an uncommitted write identified by ``ref``).

    ``offset`` is how many bytes the ingest holds; ``total`` the size the
    writer announced (0 when unknown); ``expected`` the digest it announced.
    """

    ref: str
    offset: int
    total: int
    expected: Digest | None
    started_at: datetime
    updated_at: datetime
