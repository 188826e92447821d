"""Snapshots: the Snapshotter interface, its records, and the rules they share.

A snapshotter manages filesystem trees in a parent chain, exactly as
containerd's ``snapshots.Snapshotter`` does:

* ``prepare(key, parent)`` makes an **active** snapshot: a writable tree over
  the committed ``parent`` (or empty). Its mounts are what an applier writes a
  layer into, or what a container runs on.
* ``commit(name, key)`` turns active ``key`` into **committed** ``name``, which
  may then be a parent. The active key is gone afterwards.
* ``view(key, parent)`` makes a read-only **view** of a committed snapshot.
* ``remove(key)`` deletes a snapshot that has no children.

Layering inside this package (each module knows only those above it)::

    berth.core.snapshots          the interface and records (this module)
    ├── storage                   SQLite record store shared by the backends
    ├── fsutil                    disk usage and tree copying
    ├── overlay, native           the backends ("overlayfs", "native")
    ├── metadata                  namespacing over any backend, leases, GC hooks
    └── plugin                    registration with berthd

Every method here is **blocking** (SQLite, mkdir, copies, tree walks): call
them from a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from berth import errdefs, filters
from berth import labels as labelsmod
from berth.core.mount import Mount

__all__ = [
    "INHERITED_LABEL_PREFIX",
    "SNAPSHOT_REF_LABEL",
    "Info",
    "Kind",
    "Snapshotter",
    "Usage",
    "adapt_info",
    "apply_label_update",
    "inherited_labels",
    "validate_labels",
]

# Labels with this prefix (and the target-reference label) are handed down to
# the backend snapshotter; all others live only in the namespaced metadata.
INHERITED_LABEL_PREFIX = "containerd.io/snapshot/"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"


class Kind(enum.IntEnum):
    """A snapshot's kind; values are the wire enum's (snapshots.v1.Kind)."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    def __str__(self) -> str:
        # containerd prints kinds capitalised ("Active") in ctr's tables.
        return self.name.capitalize()

    @property
    def filter_name(self) -> str:
        """The value the ``kind`` filter field compares against (``active``)."""
        return self.name.lower()


@dataclass
class Info:
    """What is known about one snapshot. Times are UTC nanoseconds."""

    name: str
    kind: Kind = Kind.UNKNOWN
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0
    updated: int = 0


@dataclass(frozen=True)
class Usage:
    """Resources a snapshot holds: bytes allocated on disk, and inodes."""

    size: int = 0
    inodes: int = 0


class Snapshotter(ABC):
    """A store of snapshot trees keyed by strings.

    Costs are stated per method; "record" means one indexed SQLite lookup.
    Errors come from ``berth.errdefs``: NotFound for unknown keys,
    AlreadyExists for taken keys, FailedPrecondition for a wrong kind or a
    snapshot with children, InvalidArgument for bad labels or field paths.
    """

    @abstractmethod
    def stat(self, key: str) -> Info:
        """Info of the snapshot ``key`` (any kind). Cost: one record.

        Raises NotFound.
        """

    @abstractmethod
    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change mutable fields (labels only) of ``info.name``; return the result.

        ``fieldpaths`` may hold ``labels`` (replace all) or ``labels.<key>``
        (set one; an empty value deletes it); none replaces all labels.
        Cost: one record. Raises NotFound, InvalidArgument.
        """

    @abstractmethod
    def usage(self, key: str) -> Usage:
        """Disk usage of ``key``'s own changes (not its parents').

        Cost: one record for committed snapshots (usage is stored at commit);
        a walk of the whole writable tree for active ones. Raises NotFound.
        """

    @abstractmethod
    def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view snapshot ``key``. Cost: one record plus
        its parent chain. Raises NotFound, FailedPrecondition (committed)."""

    @abstractmethod
    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create active snapshot ``key`` over committed ``parent``; return its mounts.

        Cost: a few mkdirs (overlayfs) or a full copy of the parent (native).
        Raises AlreadyExists (key taken), NotFound (parent missing),
        InvalidArgument (parent not committed, bad labels).
        """

    @abstractmethod
    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create read-only view ``key`` of committed ``parent``; return its mounts.

        Cost: one record and at most a mkdir. Raises as :meth:`prepare`.
        """

    @abstractmethod
    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        """Commit active ``key`` as ``name``; ``key`` ceases to exist.

        The labels given replace the active snapshot's. Cost: a walk of the
        writable tree to record its usage. Raises NotFound, AlreadyExists
        (name taken), FailedPrecondition (``key`` is not active).
        """

    @abstractmethod
    def remove(self, key: str) -> None:
        """Delete snapshot ``key`` and its files.

        Cost: one record plus a recursive delete. Raises NotFound,
        FailedPrecondition (it has children).
        """

    @abstractmethod
    def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        """Every snapshot matching all of ``filters`` (containerd filter syntax;
        fields ``name``, ``parent``, ``kind``, ``labels.<key>``).

        Cost: a scan of all records. Raises InvalidArgument for bad filters.
        """

    def cleanup(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Reclaim disk left by removed or abandoned snapshots. Cost: a scan of
        the snapshot directory. The default does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release resources (database handles)."""


def adapt_info(info: Info) -> filters.Adaptor:
    """How filters see a snapshot, as containerd's snapshot adaptor does:
    ``name`` and ``parent`` are present even when empty."""
    return filters.adapt_mapping(
        {
            "name": (info.name, True),
            "parent": (info.parent, True),
            "kind": (info.kind.filter_name, info.kind is not Kind.UNKNOWN),
        },
        labels=info.labels,
    )


def validate_labels(lbls: Mapping[str, str]) -> None:
    """Reject oversized labels (InvalidArgument); empty values mean "unset"."""
    labelsmod.validate({k: v for k, v in lbls.items() if v})


def inherited_labels(lbls: Mapping[str, str]) -> dict[str, str]:
    """The labels a backend snapshotter gets to see."""
    return {
        k: v
        for k, v in lbls.items()
        if k == SNAPSHOT_REF_LABEL or k.startswith(INHERITED_LABEL_PREFIX)
    }


def apply_label_update(
    current: Mapping[str, str],
    info: Info,
    fieldpaths: Sequence[str],
) -> dict[str, str]:
    """The labels after applying an update of ``info`` restricted to ``fieldpaths``.

    Raises InvalidArgument for any path other than ``labels``/``labels.<key>``
    (containerd's wording). Empty values are dropped: they delete a label.
    """
    if fieldpaths:
        result = dict(current)
        for path in fieldpaths:
            if path.startswith("labels."):
                key = path[len("labels.") :]
                result[key] = info.labels.get(key, "")
            elif path == "labels":
                result = dict(info.labels)
            else:
                raise errdefs.InvalidArgument(
                    f"cannot update {errdefs.go_quote(path)} field on snapshot {errdefs.go_quote(info.name)}:"
                    " invalid argument"
                )
    else:
        result = dict(info.labels)
    return {k: v for k, v in result.items() if v}
