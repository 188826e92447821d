"""Image archives: import and export of OCI image-layout and ``docker save`` tars.

Pure domain code (no gRPC): it reads and writes tar streams and talks to a
content store through :class:`ArchiveStore`, so the same functions serve
berthd (over its metadata store, :class:`NamespacedStore`) and the SDK
(over the gRPC Content service, client side, as ``ctr`` does).

    >>> records = import_archive(open("img.tar", "rb"), store, lease=lease_id,
    ...                          options=ImportOptions(ref_translator=add_ref_prefix("import")))
    >>> for r in records:   # then, still under the lease: create or retarget images
    ...     images.update_or_create(r.name, r.target)
    >>> export_archive(open("out.tar", "wb"), store, [ImageRecord(name, target)])

Modules: :mod:`.importer` (reading archives; the design notes are there),
:mod:`.exporter` (writing them), :mod:`.names` (reference rules),
:mod:`.store` (the store protocol and adapters).
"""

from berth.core.archive.exporter import SupportsWrite, export_archive
from berth.core.archive.importer import (
    MAX_DOCUMENT_SIZE,
    ImageRecord,
    ImportOptions,
    import_archive,
)
from berth.core.archive.names import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    add_ref_prefix,
    digest_translator,
    familiarize_reference,
    filter_ref_prefix,
    normalize_reference,
    oci_reference_name,
)
from berth.core.archive.store import (
    ArchiveStore,
    IngestWriter,
    LeaseScoped,
    NamespacedStore,
)

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "MAX_DOCUMENT_SIZE",
    "ArchiveStore",
    "ImageRecord",
    "ImportOptions",
    "IngestWriter",
    "LeaseScoped",
    "NamespacedStore",
    "SupportsWrite",
    "add_ref_prefix",
    "digest_translator",
    "export_archive",
    "familiarize_reference",
    "filter_ref_prefix",
    "import_archive",
    "normalize_reference",
    "oci_reference_name",
]
