"""The registry client: references, hosts, auth, resolve/fetch/push, pull and push pipelines.

Pure domain code over :mod:`berth.core.content` and :mod:`berth.core.images`;
it speaks HTTP (httpx) to registries and nothing else.

* :class:`Reference` - ``host/repo:tag@digest`` parsing and normalisation;
* :func:`configure_hosts` - containerd ``hosts.toml`` directories;
* :class:`Authorizer`, :func:`docker_config_credentials` - Basic/Bearer auth;
* :class:`Resolver` (with :class:`Fetcher`, :class:`Pusher`) - the client;
* :func:`pull`, :func:`push` - the pipelines between a registry and a store.
"""

# First, so that httpx, whichever submodule loads it, comes without its CLI.
from berth.core.remotes import _httpx  # noqa: F401
from berth.core.remotes.auth import (
    Authorizer,
    Challenge,
    Credentials,
    CredentialsProvider,
    chain_credentials,
    credentials_from_table,
    docker_config_credentials,
    parse_docker_config,
    parse_www_authenticate,
    static_credentials,
)
from berth.core.remotes.errors import (
    Forbidden,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
    UnexpectedStatus,
)
from berth.core.remotes.hosts import (
    Capability,
    RegistryHost,
    RegistryHosts,
    configure_hosts,
    parse_hosts_toml,
)
from berth.core.remotes.progress import (
    Labeler,
    NoLabels,
    Progress,
    ProgressFn,
    StoreLabeler,
    ref_key,
)
from berth.core.remotes.pull import LayerToUnpack, PullResult, UnpackFn, pull
from berth.core.remotes.push import push
from berth.core.remotes.reference import Reference, parse_reference
from berth.core.remotes.resolver import BlobStream, Fetcher, Pusher, Resolver, RetryPolicy

__all__ = [
    "Authorizer",
    "BlobStream",
    "Capability",
    "Challenge",
    "Credentials",
    "CredentialsProvider",
    "Fetcher",
    "Forbidden",
    "Labeler",
    "LayerToUnpack",
    "NoLabels",
    "Progress",
    "ProgressFn",
    "PullResult",
    "Pusher",
    "Reference",
    "RegistryError",
    "RegistryHost",
    "RegistryHosts",
    "RegistryUnavailable",
    "Resolver",
    "RetryPolicy",
    "StoreLabeler",
    "Unauthorized",
    "UnexpectedStatus",
    "UnpackFn",
    "chain_credentials",
    "configure_hosts",
    "credentials_from_table",
    "docker_config_credentials",
    "parse_docker_config",
    "parse_hosts_toml",
    "parse_reference",
    "parse_www_authenticate",
    "pull",
    "push",
    "ref_key",
    "static_credentials",
]
