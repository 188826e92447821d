"""Diffs: applying layer blobs onto mounts, and comparing mounts into layer blobs.

The two halves of containerd's ``diff.Applier`` and ``diff.Comparer``:

* :meth:`Differ.apply` reads a layer blob from the content store, inflates it
  (gzip, zstd or none, sniffed as containerd does), and extracts it onto the
  mounts of an active snapshot (see :mod:`berth.core.diff.archive` for the
  secure, parallel extractor). The result describes the *uncompressed* tar;
  its digest is the layer's diff ID.
* :meth:`Differ.compare` walks two mounted trees and writes their difference
  as an OCI layer tar (gzip by default) into the content store.

Layering inside this package (each module knows only those above it)::

    berth.core.diff             the interface and shared constants (this module)
    ├── archive                 tar -> directory (apply), whiteouts, security
    ├── changes                 directory pair -> tar (compare)
    ├── content                 a namespace's content store as a Store
    ├── walking                 the "walking" Differ over the content store
    └── plugin                  registration with berthd

Errors (all from :mod:`berth.errdefs`)::

    BerthError (gRPC UNKNOWN)   filesystem failures naming the entry; an
    │                           unknown media type ("no processor for media-type")
    ├── InvalidArgument         hostile or corrupt layers (path escapes, bad
    │                           whiteouts, refused device nodes, broken gzip,
    │                           invalid tar), bad mounts
    ├── NotFound                the blob is not in the namespace's store
    └── NotImplemented          an unsupported diff media type for compare

Everything here blocks (file I/O, mounts, hashing): call it from a worker
thread, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

from berth.core.content import Descriptor
from berth.core.mount import Mount

__all__ = [
    "UNCOMPRESSED_LABEL",
    "Differ",
    "ProgressFn",
]

#: Content label carrying a compressed layer's diff ID (containerd's name).
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"

#: Called with the number of uncompressed bytes applied so far.
ProgressFn = Callable[[int], None]


class Differ(ABC):
    """Applies layers to mounts and computes layers from mounts, for one namespace."""

    @abstractmethod
    def apply(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        on_progress: ProgressFn | None = None,
    ) -> Descriptor:
        """Extract layer blob ``desc`` onto ``mounts``; return the uncompressed
        diff (media type ``application/vnd.oci.image.layer.v1.tar``, digest =
        diff ID, size = tar bytes).

        ``desc.media_type`` must be a layer type; the compression is sniffed
        from the data, as containerd does. A single overlay mount is applied
        to its upper directory directly (overlay whiteouts); anything else is
        mounted on a temporary directory (real deletions).

        Cost: one sequential read of the blob, inflate and SHA-256 of the tar,
        and one file creation per entry (spread over a few threads).
        Raises NotFound, InvalidArgument, BerthError (see the module notes).
        The mounts may hold a half-applied layer after an error; the caller
        removes the snapshot.
        """

    @abstractmethod
    def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """Write the changes from ``lower`` to ``upper`` as a layer blob into
        the content store and return its descriptor.

        ``media_type`` is ``application/vnd.oci.image.layer.v1.tar`` with
        ``+gzip`` (the default) or ``+zstd``, or the plain tar; ``ref`` names
        the ingest (random when empty); ``labels`` go on the committed blob,
        which also gets :data:`UNCOMPRESSED_LABEL` when compressed.

        Cost: both trees mounted read-only and walked in full; changed files
        read once. Raises NotImplemented (media type), InvalidArgument
        (mounts), and content-store errors.
        """
