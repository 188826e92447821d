"""The content store: immutable, digest-addressed blobs and resumable ingests.

Pure domain code (no gRPC): :class:`Store` is the interface, :class:`LocalStore`
the filesystem implementation (containerd's ``content/local`` layout), and
:func:`copy_into` the streaming helper used to fill it from a remote source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from berth import lazy
from berth.core.content.digest import CANONICAL, Algorithm, Digest, Digester, parse_digest
from berth.core.content.errors import OutOfRange, ShortRead
from berth.core.content.model import Descriptor, Info, Status
from berth.core.content.store import (
    InfoFilter,
    LabelStore,
    ReaderAt,
    StatusFilter,
    Store,
    WalkFn,
    Writer,
)

if TYPE_CHECKING:
    from berth.core.content.helpers import Source, SupportsRead, copy_into, open_writer_waiting
    from berth.core.content.labels import MemoryLabelStore
    from berth.core.content.local import LocalReaderAt, LocalStore, LocalWriter

# The filesystem store and the copy helpers load on first use: the CLI and
# the SDK parse manifests with this package's digests and descriptors on
# every `berth run`, and never touch a local store (whose imports, shutil
# with bz2 and lzma among them, cost several milliseconds per command).
_LAZY = {
    "Source": "helpers",
    "SupportsRead": "helpers",
    "copy_into": "helpers",
    "open_writer_waiting": "helpers",
    "MemoryLabelStore": "labels",
    "LocalReaderAt": "local",
    "LocalStore": "local",
    "LocalWriter": "local",
}

__getattr__ = lazy.attributes(__name__, _LAZY, globals())


__all__ = [
    "CANONICAL",
    "Algorithm",
    "Descriptor",
    "Digest",
    "Digester",
    "Info",
    "InfoFilter",
    "LabelStore",
    "LocalReaderAt",
    "LocalStore",
    "LocalWriter",
    "MemoryLabelStore",
    "OutOfRange",
    "ReaderAt",
    "ShortRead",
    "Source",
    "Status",
    "StatusFilter",
    "Store",
    "SupportsRead",
    "WalkFn",
    "Writer",
    "copy_into",
    "open_writer_waiting",
    "parse_digest",
]
