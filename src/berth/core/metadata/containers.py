"""Container records: what a container pins, per namespace, and its GC edges.

A container is metadata only -- an id, labels, the image reference it was
made from, a runtime (name plus opaque options), the OCI spec, the
snapshotter and snapshot key of its root filesystem, and client extensions.
Tasks are created from it later; nothing here runs anything.

Opaque payloads (the spec, runtime options, extensions) are protobuf ``Any``
values on the wire. This module never imports protobuf: it keeps each one as
an :class:`AnyValue` -- the type URL and the serialized bytes -- and the gRPC
adapter converts at the edge. containerd stores the spec the same way, as an
``Any`` whose type URL is :data:`SPEC_TYPE_URL` and whose value is the JSON
of the spec.

Rules mirror containerd 1.6's container store (``metadata/containers.go``):

* create and update validate the id (identifier rules), labels, extension
  keys (non-empty), runtime name (required), spec (required), and that a
  snapshot key comes with a snapshotter -- all InvalidArgument;
* an update without field paths replaces ``labels``, ``spec``,
  ``extensions``, ``image`` and ``snapshotkey``, and refuses a request whose
  snapshotter or runtime name differs from the stored one (both are
  immutable); with paths, only ``labels``, ``labels.<key>``, ``extensions``,
  ``extensions.<key>``, ``spec``, ``image`` and ``snapshotkey`` may be named;
* list filters see ``id``, ``image``, ``runtime.name`` and ``labels.<key>``
  (containerd's adaptor exposes nothing else, not even the snapshotter).

For garbage collection every container is a root: it keeps its snapshot
(``<snapshotter>/<snapshot_key>``) alive, and whatever its
``containerd.io/gc.ref.*`` labels name. Containers themselves are never
collected; only their owners delete them. :class:`ContainerKind` joins the
collector; the ``containers-service`` plugin registered here installs it, so
the metadata store needs no knowledge of containers.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from berth import errdefs, filters, identifiers, labels, plugin
from berth.core.metadata import namespaces as nsmod
from berth.core.metadata.content import _dt
from berth.core.metadata.db import DB, now_ns, register_schema
from berth.core.metadata.gc import SNAPSHOT, Collector, Node, label_refs, load_labels

__all__ = [
    "CONTAINER",
    "SERVICE_ID",
    "SPEC_TYPE_URL",
    "UPDATABLE_FIELDS",
    "AnyValue",
    "Container",
    "ContainerKind",
    "ContainerStore",
    "Runtime",
    "container_adaptor",
    "validate",
]

#: The type URL containerd gives the OCI runtime spec when it stores it as an Any.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

#: GC kind name of containers (they are only ever roots).
CONTAINER = "container"

#: The service plugin id, as containerd's ``services.ContainersService``.
SERVICE_ID = "containers-service"

#: What an update without field paths replaces, in containerd's order.
UPDATABLE_FIELDS = ("labels", "spec", "extensions", "image", "snapshotkey")

register_schema(
    """
    CREATE TABLE IF NOT EXISTS containers (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        image TEXT NOT NULL DEFAULT '',
        runtime_name TEXT NOT NULL,
        runtime_options_type TEXT,
        runtime_options BLOB,
        spec_type TEXT NOT NULL,
        spec BLOB NOT NULL,
        snapshotter TEXT NOT NULL DEFAULT '',
        snapshot_key TEXT NOT NULL DEFAULT '',
        extensions TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    """,
    namespaced=(("containers", "containers"),),
)


@dataclass(frozen=True, slots=True)
class AnyValue:
    """A protobuf ``Any`` without protobuf: a type URL and the message bytes."""

    type_url: str
    value: bytes = b""

    @classmethod
    def spec(cls, spec_json: bytes) -> AnyValue:
        """An OCI spec (its JSON bytes) typed as containerd types it."""
        return cls(SPEC_TYPE_URL, spec_json)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The runtime tasks of the container use (``io.containerd.runc.v2``...)."""

    name: str
    options: AnyValue | None = None


@dataclass(frozen=True)
class Container:
    """One container record. ``created_at``/``updated_at`` are set by the store."""

    id: str
    runtime: Runtime
    spec: AnyValue | None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def validate(container: Container) -> None:
    """Check a container as containerd's ``validateContainer`` does.

    Raises InvalidArgument naming the offending field.
    """
    try:
        identifiers.validate(container.id)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"container.ID: {exc}") from None
    if any(not k for k in container.extensions):
        raise errdefs.InvalidArgument("container.Extension keys must not be zero-length")
    try:
        labels.validate(container.labels)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"containers.Labels: {exc}") from None
    if not container.runtime.name:
        raise errdefs.InvalidArgument("container.Runtime.Name must be set")
    if container.spec is None:
        raise errdefs.InvalidArgument("container.Spec must be set")
    if container.snapshot_key and not container.snapshotter:
        raise errdefs.InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set"
        )


def container_adaptor(container: Container) -> filters.Adaptor:
    """Filter fields of a container, exactly containerd's: ``id``, ``image``,
    ``runtime.name`` and ``labels.<key>``."""
    return filters.adapt_mapping(
        {
            "id": container.id,
            "image": container.image,
            "runtime": {"name": container.runtime.name},
        },
        labels=container.labels,
    )


def gc_refs(namespace: str, container: Container) -> set[Node]:
    """What ``container`` keeps alive: its snapshot and its label references."""
    refs = set(label_refs(namespace, container.labels))
    if container.snapshotter and container.snapshot_key:
        refs.add(Node(SNAPSHOT, namespace, f"{container.snapshotter}/{container.snapshot_key}"))
    return refs


# --- row encoding -----------------------------------------------------------------


def _clean(m: Mapping[str, str]) -> dict[str, str]:
    # containerd does not store labels with empty values: setting one to ""
    # is how a client removes it.
    return {k: v for k, v in m.items() if v}


def _dump_extensions(ext: Mapping[str, AnyValue]) -> str:
    return json.dumps(
        {k: [v.type_url, base64.b64encode(v.value).decode("ascii")] for k, v in ext.items()},
        sort_keys=True,
    )


def _load_extensions(text: str) -> dict[str, AnyValue]:
    raw: dict[str, list[str]] = json.loads(text or "{}")
    return {k: AnyValue(t, base64.b64decode(v)) for k, (t, v) in raw.items()}


def _row_container(row: sqlite3.Row) -> Container:
    opts_type = row["runtime_options_type"]
    return Container(
        id=row["id"],
        labels=load_labels(row["labels"]),
        image=row["image"],
        runtime=Runtime(
            row["runtime_name"],
            AnyValue(opts_type, bytes(row["runtime_options"] or b""))
            if opts_type is not None
            else None,
        ),
        spec=AnyValue(row["spec_type"], bytes(row["spec"])),
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        extensions=_load_extensions(row["extensions"]),
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
    )


def _columns(c: Container) -> dict[str, Any]:
    assert c.spec is not None  # validate() ran first
    opts = c.runtime.options
    return {
        "labels": json.dumps(c.labels, sort_keys=True),
        "image": c.image,
        "runtime_name": c.runtime.name,
        "runtime_options_type": opts.type_url if opts is not None else None,
        "runtime_options": opts.value if opts is not None else None,
        "spec_type": c.spec.type_url,
        "spec": c.spec.value,
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "extensions": _dump_extensions(c.extensions),
    }


def _apply_paths(current: Container, request: Container, fieldpaths: Iterable[str]) -> Container:
    """``current`` with the fields ``fieldpaths`` names taken from ``request``."""
    lbls = dict(current.labels)
    ext = dict(current.extensions)
    out = current
    for path in fieldpaths:
        if path.startswith("labels."):
            key = path.removeprefix("labels.")
            lbls[key] = request.labels.get(key, "")
        elif path.startswith("extensions."):
            # containerd writes a zero Any for a key missing from the request;
            # an Any with no type means nothing, so the key is dropped instead.
            key = path.removeprefix("extensions.")
            if key in request.extensions:
                ext[key] = request.extensions[key]
            else:
                ext.pop(key, None)
        elif path == "labels":
            lbls = dict(request.labels)
        elif path == "extensions":
            ext = dict(request.extensions)
        elif path == "spec":
            out = replace(out, spec=request.spec)
        elif path == "image":
            out = replace(out, image=request.image)
        elif path == "snapshotkey":
            out = replace(out, snapshot_key=request.snapshot_key)
        else:
            raise errdefs.InvalidArgument(f'cannot update "{path}" field on "{current.id}"')
    return replace(out, labels=_clean(lbls), extensions=ext)


class ContainerStore:
    """Blocking container operations; call from a thread (see ``DB.run``)."""

    def __init__(self, db: DB, *, collector: Collector | None = None) -> None:
        self.db = db
        self._collector = collector

    def _mutated(self, *, deletion: bool = False) -> None:
        if self._collector is not None:
            self._collector.mutated(deletion=deletion)

    def get(self, namespace: str, container_id: str) -> Container:
        """Raises NotFound if the namespace has no container ``container_id``."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT * FROM containers WHERE namespace=? AND id=?", (namespace, container_id)
            ).fetchone()
        if row is None:
            raise errdefs.NotFound(
                f'container "{container_id}" in namespace "{namespace}": not found'
            )
        return _row_container(row)

    def list(self, namespace: str, filter_strings: Sequence[str] = ()) -> list[Container]:
        """Containers matching any filter, by id. InvalidArgument for a bad filter."""
        flt = filters.parse_all(list(filter_strings))
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT * FROM containers WHERE namespace=? ORDER BY id", (namespace,)
            ).fetchall()
        return [c for c in map(_row_container, rows) if flt.match(container_adaptor(c))]

    def create(self, namespace: str, container: Container) -> Container:
        """Store a new container; the timestamps are set here.

        Raises InvalidArgument (validation) or AlreadyExists.
        """
        container = replace(container, labels=_clean(container.labels))
        try:
            validate(container)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"create container failed validation: {exc}") from None
        now = now_ns()
        cols = _columns(container)
        with self.db.tx() as cur:
            nsmod.ensure(cur, namespace)
            names = ", ".join(cols)
            marks = ",".join("?" * (len(cols) + 4))
            try:
                cur.execute(
                    f"INSERT INTO containers(namespace, id, {names}, created_at, updated_at)"
                    f" VALUES ({marks})",
                    (namespace, container.id, *cols.values(), now, now),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(f'container "{container.id}": already exists') from None
        self._mutated()
        return replace(container, created_at=_dt(now), updated_at=_dt(now))

    def update(
        self, namespace: str, container: Container, fieldpaths: Sequence[str] = ()
    ) -> Container:
        """Change container ``container.id`` from the fields of ``container``.

        Without ``fieldpaths`` the mutable fields (:data:`UPDATABLE_FIELDS`)
        are all replaced, and a different snapshotter or runtime name is an
        error. Raises InvalidArgument (no id, immutable field, unknown path,
        failed validation) or NotFound.
        """
        if not container.id:
            raise errdefs.InvalidArgument("must specify a container id")
        with self.db.tx() as cur:
            row = cur.execute(
                "SELECT * FROM containers WHERE namespace=? AND id=?", (namespace, container.id)
            ).fetchone()
            if row is None:
                raise errdefs.NotFound(f'container "{container.id}": not found')
            current = _row_container(row)
            paths: Sequence[str] = fieldpaths
            if not paths:
                paths = UPDATABLE_FIELDS
                # Immutable fields must match on a full replace, so that they
                # can become mutable later without changing what old clients
                # meant.
                if current.snapshotter != container.snapshotter:
                    raise errdefs.InvalidArgument("container.Snapshotter field is immutable")
                if current.runtime.name != container.runtime.name:
                    raise errdefs.InvalidArgument("container.Runtime.Name field is immutable")
            updated = _apply_paths(current, container, paths)
            try:
                validate(updated)
            except errdefs.InvalidArgument as exc:
                raise errdefs.InvalidArgument(f"update failed validation: {exc}") from None
            stamp = now_ns()
            cols = _columns(updated)
            assignments = ", ".join(f"{k}=?" for k in cols)
            cur.execute(
                f"UPDATE containers SET {assignments}, updated_at=? WHERE namespace=? AND id=?",
                (*cols.values(), stamp, namespace, container.id),
            )
        # Dropping a reference (a new snapshot key, a removed gc.ref label)
        # may leave garbage behind: that makes a collection due.
        dropped = not gc_refs(namespace, current) <= gc_refs(namespace, updated)
        self._mutated(deletion=dropped)
        return replace(updated, updated_at=_dt(stamp))

    def delete(self, namespace: str, container_id: str) -> None:
        """Remove the record; its snapshot goes at the next collection unless
        something else holds it. Raises NotFound."""
        with self.db.tx() as cur:
            cur.execute(
                "DELETE FROM containers WHERE namespace=? AND id=?", (namespace, container_id)
            )
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"container {container_id}: not found")
        self._mutated(deletion=True)


class ContainerKind:
    """Containers in the GC graph: roots for their snapshot and label refs."""

    name = CONTAINER

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        rows = cur.execute(
            "SELECT namespace, labels, snapshotter, snapshot_key FROM containers"
        ).fetchall()
        for row in rows:
            ns = row["namespace"]
            if row["snapshotter"] and row["snapshot_key"]:
                yield Node(SNAPSHOT, ns, f"{row['snapshotter']}/{row['snapshot_key']}")
            yield from label_refs(ns, load_labels(row["labels"]))

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterator[Node]:
        return iter(())

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        return iter(())  # containers are only ever deleted by their owners

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        return None

    def cleanup(self) -> None:
        return None


# --- the service plugin -------------------------------------------------------------


def _init_service(ic: plugin.InitContext) -> ContainerStore:
    md: Any = ic.get(plugin.METADATA)
    collector: Collector | None = getattr(md, "collector", None)
    if collector is not None:
        # Registered here rather than by the metadata plugin: containers are
        # one more subsystem joining GC through the ResourceKind seam.
        collector.register(ContainerKind())
    return ContainerStore(md, collector=collector)


SERVICE_REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.SERVICE,
        id=SERVICE_ID,
        init=_init_service,
        requires=(plugin.METADATA,),
    )
)
