"""Image records: a name bound to a target descriptor, per namespace.

An image is only metadata -- name, target (media type, digest, size,
annotations), labels and timestamps -- pointing into the content store. For
GC every image is a root: its target digest and its ``containerd.io/gc.ref.*``
labels keep content (and, later, snapshots) alive.

Validation and messages follow containerd's image store, so clients see the
same InvalidArgument/NotFound/AlreadyExists texts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from berth import errdefs, filters, labels
from berth.core.content import Descriptor, Digest
from berth.core.metadata import namespaces as nsmod
from berth.core.metadata.content import _dt
from berth.core.metadata.db import DB, now_ns, register_schema
from berth.core.metadata.gc import CONTENT, IMAGE, Collector, Node, label_refs, load_labels

register_schema(
    """
    CREATE TABLE IF NOT EXISTS images (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        media_type TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    """,
    namespaced=(("images", "images"),),
)


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def make_target(
    media_type: str, digest: str, size: int, annotations: Mapping[str, str] | None = None
) -> Descriptor:
    """Validate the stored fields of an image target, with containerd's messages.

    Raises InvalidArgument for a bad digest, a size <= 0 or an empty media type.
    """
    try:
        d = Digest.parse(digest)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(
            f"Target.Digest {errdefs.go_quote(digest)} invalid: {exc}"
        ) from None
    if size <= 0:
        raise errdefs.InvalidArgument("Target.Size must be greater than zero")
    if not media_type:
        raise errdefs.InvalidArgument("Target.MediaType must be set")
    return Descriptor(media_type, d, size, dict(annotations or {}))


def _validate(name: str, lbls: Mapping[str, str]) -> None:
    if not name:
        raise errdefs.InvalidArgument("image name must not be empty")
    try:
        labels.validate(lbls)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"image.Labels: {exc}") from None


def image_adaptor(image: Image) -> filters.Adaptor:
    """Filter fields of an image, as containerd's: ``name``, ``target.digest``,
    ``target.mediatype``, ``labels.<key>``, ``annotations.<key>``."""
    return filters.adapt_mapping(
        {
            "name": image.name,
            "target": {
                "digest": str(image.target.digest),
                "mediatype": image.target.media_type,
            },
            "annotations": filters.LabelMap(image.target.annotations),
        },
        labels=image.labels,
    )


def _row_image(row: sqlite3.Row) -> Image:
    return Image(
        name=row["name"],
        target=Descriptor(
            row["media_type"],
            Digest.parse(row["digest"]),
            row["size"],
            load_labels(row["annotations"]),
        ),
        labels=load_labels(row["labels"]),
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
    )


def _clean(m: Mapping[str, str]) -> dict[str, str]:
    # An empty value means "no such key", as containerd stores labels.
    return {k: v for k, v in m.items() if v}


class ImageStore:
    """Blocking image operations; call from a thread (see ``DB.run``)."""

    def __init__(self, db: DB, *, collector: Collector | None = None) -> None:
        self.db = db
        self._collector = collector

    def _mutated(self, *, deletion: bool = False) -> None:
        if self._collector is not None:
            self._collector.mutated(deletion=deletion)

    def get(self, namespace: str, name: str) -> Image:
        """Raises NotFound if the namespace has no image ``name``."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT * FROM images WHERE namespace=? AND name=?", (namespace, name)
            ).fetchone()
        if row is None:
            raise errdefs.NotFound(f'image "{name}": not found')
        return _row_image(row)

    def list(self, namespace: str, filter_strings: Sequence[str] = ()) -> list[Image]:
        """Images matching any filter, by name. InvalidArgument for a bad filter."""
        flt = filters.parse_all(list(filter_strings))
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT * FROM images WHERE namespace=? ORDER BY name", (namespace,)
            ).fetchall()
        return [img for img in map(_row_image, rows) if flt.match(image_adaptor(img))]

    def create(self, namespace: str, image: Image) -> Image:
        """Store a new image. InvalidArgument, or AlreadyExists if the name is taken."""
        lbls = _clean(image.labels)
        _validate(image.name, lbls)
        t = image.target
        now = now_ns()
        with self.db.tx() as cur:
            nsmod.ensure(cur, namespace)
            try:
                cur.execute(
                    "INSERT INTO images(namespace, name, media_type, digest, size, annotations,"
                    " labels, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        namespace,
                        image.name,
                        t.media_type,
                        str(t.digest),
                        t.size,
                        json.dumps(_clean(t.annotations), sort_keys=True),
                        json.dumps(lbls, sort_keys=True),
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(f'image "{image.name}": already exists') from None
        self._mutated()
        return Image(
            image.name,
            Descriptor(t.media_type, t.digest, t.size, _clean(t.annotations)),
            lbls,
            _dt(now),
            _dt(now),
        )

    def update(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        target: Descriptor | None = None,
        annotations: Mapping[str, str] | None = None,
        fieldpaths: Sequence[str] = (),
    ) -> Image:
        """Change an image, as containerd's Update with an optional field mask.

        Without ``fieldpaths`` the labels and the whole target (which must be
        given) are replaced. Paths: ``labels``, ``labels.<key>``, ``target``,
        ``annotations``, ``annotations.<key>``; an empty value removes a key.
        Raises InvalidArgument (empty name, unknown path, missing target,
        invalid label) or NotFound.
        """
        if not name:
            raise errdefs.InvalidArgument("image name is required for update")
        new_labels = dict(labels or {})
        new_annotations = dict(annotations if annotations is not None else ())
        with self.db.tx() as cur:
            row = cur.execute(
                "SELECT * FROM images WHERE namespace=? AND name=?", (namespace, name)
            ).fetchone()
            if row is None:
                raise errdefs.NotFound(f'image "{name}": not found')
            current = _row_image(row)
            lbls = dict(current.labels)
            tgt = current.target
            ann = dict(tgt.annotations)
            if not fieldpaths:
                if target is None:
                    raise errdefs.InvalidArgument(
                        f'image "{name}": a target is required to replace the image'
                    )
                lbls = new_labels
                tgt = target
                ann = dict(target.annotations)
            for path in fieldpaths:
                if path.startswith("labels."):
                    key = path.removeprefix("labels.")
                    lbls[key] = new_labels.get(key, "")
                elif path.startswith("annotations."):
                    key = path.removeprefix("annotations.")
                    ann[key] = new_annotations.get(key, "")
                elif path == "labels":
                    lbls = dict(new_labels)
                elif path == "target":
                    if target is None:
                        raise errdefs.InvalidArgument(
                            f'image "{name}": target update needs a valid target'
                        )
                    tgt = target
                    ann = dict(target.annotations)
                elif path == "annotations":
                    ann = dict(new_annotations)
                else:
                    raise errdefs.InvalidArgument(f'cannot update "{path}" field on image "{name}"')
            lbls = _clean(lbls)
            ann = _clean(ann)
            _validate(name, lbls)
            updated = now_ns()
            cur.execute(
                "UPDATE images SET media_type=?, digest=?, size=?, annotations=?, labels=?,"
                " updated_at=? WHERE namespace=? AND name=?",
                (
                    tgt.media_type,
                    str(tgt.digest),
                    tgt.size,
                    json.dumps(ann, sort_keys=True),
                    json.dumps(lbls, sort_keys=True),
                    updated,
                    namespace,
                    name,
                ),
            )
        # A new target may drop the last reference to the old one.
        self._mutated(deletion=tgt.digest != current.target.digest)
        return Image(
            name,
            Descriptor(tgt.media_type, tgt.digest, tgt.size, ann),
            lbls,
            current.created_at,
            _dt(updated),
        )

    def delete(self, namespace: str, name: str) -> None:
        """Remove the record; what it referenced goes at the next collection.

        Raises NotFound.
        """
        with self.db.tx() as cur:
            cur.execute("DELETE FROM images WHERE namespace=? AND name=?", (namespace, name))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f'image "{name}": not found')
        self._mutated(deletion=True)


class ImageKind:
    """Images in the GC graph: every image is a root for its target and label refs."""

    name = IMAGE

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        for row in cur.execute("SELECT namespace, digest, labels FROM images").fetchall():
            ns = row["namespace"]
            yield Node(CONTENT, ns, row["digest"])
            yield from label_refs(ns, load_labels(row["labels"]))

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterator[Node]:
        return iter(())

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        return iter(())  # images are only ever deleted by their owners

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        return None

    def cleanup(self) -> None:
        return None
