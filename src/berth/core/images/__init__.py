"""Image content: media types, manifests, indexes, configs, platforms, layer codecs.

Pure domain code over :mod:`berth.core.content`; no gRPC, no network.

* :mod:`.mediatypes` - the Docker/OCI media type names and predicates;
* :mod:`.manifest` - :class:`Descriptor` (with platform) and the validating
  parsers :func:`parse_manifest`, :func:`parse_index`, :func:`parse_config`;
* :mod:`.platforms` - ``os/arch/variant`` parsing, normalisation, matchers;
* :mod:`.gclabels` - the GC and distribution-source labels of a pull;
* :mod:`.rootfs` - chain IDs; :mod:`.compression` - layer decompression;
* :mod:`.walk` - following an image through a content store.
"""

from typing import TYPE_CHECKING

from berth import lazy
from berth.core.images import mediatypes
from berth.core.images.gclabels import (
    DISTRIBUTION_SOURCE_PREFIX,
    append_distribution_source,
    child_gc_labels,
    distribution_source_key,
    distribution_source_update,
    mount_candidate,
)
from berth.core.images.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    RootFS,
    check_manifest_media_type,
    children,
    parse_config,
    parse_index,
    parse_manifest,
    parse_manifest_or_index,
)
from berth.core.images.platforms import (
    ALL,
    MatchComparer,
    Matcher,
    Platform,
    default,
    default_spec,
    format_platform,
    matcher_for,
    normalize,
    only,
    only_strict,
    parse_platform,
)
from berth.core.images.rootfs import chain_id, chain_ids
from berth.core.images.walk import (
    ResolvedImage,
    filter_platforms,
    image_config,
    manifest_for_platform,
    store_children,
    walk,
)

if TYPE_CHECKING:
    from berth.core.images.compression import (
        Compression,
        ReaderAtStream,
        detect_compression,
        open_decompressed,
        open_layer,
    )

# Layer codecs load on first use: gzip, zstandard and isal cost the CLI ~9 ms
# to import, and only pulls, unpacks and exports decompress anything.
_LAZY = {
    name: "compression"
    for name in (
        "Compression",
        "ReaderAtStream",
        "detect_compression",
        "open_decompressed",
        "open_layer",
    )
}

__getattr__ = lazy.attributes(__name__, _LAZY, globals())


__all__ = [
    "ALL",
    "DISTRIBUTION_SOURCE_PREFIX",
    "MAX_MANIFEST_SIZE",
    "Compression",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "MatchComparer",
    "Matcher",
    "Platform",
    "ReaderAtStream",
    "ResolvedImage",
    "RootFS",
    "append_distribution_source",
    "chain_id",
    "chain_ids",
    "check_manifest_media_type",
    "child_gc_labels",
    "children",
    "default",
    "default_spec",
    "detect_compression",
    "distribution_source_key",
    "distribution_source_update",
    "filter_platforms",
    "format_platform",
    "image_config",
    "manifest_for_platform",
    "matcher_for",
    "mediatypes",
    "mount_candidate",
    "normalize",
    "only",
    "only_strict",
    "open_decompressed",
    "open_layer",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "parse_manifest_or_index",
    "parse_platform",
    "store_children",
    "walk",
]
