"""Where the SDK connects and in which namespace, from arguments or the environment.

Kept free of gRPC and protobuf imports so that the CLI can show defaults in
``--help`` without loading either.
"""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "/run/berth/berth.sock"
DEFAULT_NAMESPACE = "default"
#: Consulted in order; the first one set wins. CONTAINERD_ADDRESS is what ctr reads.
ADDRESS_ENV = ("BERTH_ADDRESS", "CONTAINERD_ADDRESS")
NAMESPACE_ENV = "CONTAINERD_NAMESPACE"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"


def resolve_address(address: str | None) -> str:
    """The daemon address to use: the argument, else $BERTH_ADDRESS, else
    $CONTAINERD_ADDRESS, else /run/berth/berth.sock."""
    if address:
        return address
    for name in ADDRESS_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return DEFAULT_ADDRESS


def resolve_namespace(namespace: str | None) -> str:
    """The namespace to use: the argument, else $CONTAINERD_NAMESPACE, else "default"."""
    return namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
