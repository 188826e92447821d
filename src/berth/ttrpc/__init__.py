"""ttrpc: the small RPC protocol containerd speaks with its shims over unix sockets.

This package owns Berth's implementation of it, wire-compatible with
containerd/ttrpc v1.1 (unary calls only, as containerd 1.6 uses):

* :mod:`berth.ttrpc.protocol` - framing, messages, and a sans-I/O parser;
* :mod:`berth.ttrpc.server` - asyncio server dispatching to async handlers;
* :mod:`berth.ttrpc.client` - asyncio client multiplexing concurrent calls.

It deliberately depends on nothing but the standard library, protobuf and
``berth.errdefs`` (no gRPC), because the shim imports it on every start.
"""

from berth.ttrpc._transport import PeerCredentials
from berth.ttrpc.client import Client, Metadata, ServiceStub, status_error
from berth.ttrpc.protocol import MESSAGE_LENGTH_MAX
from berth.ttrpc.server import CallContext, Handler, Server, UnaryMethod, require_same_user

__all__ = [
    "MESSAGE_LENGTH_MAX",
    "CallContext",
    "Client",
    "Handler",
    "Metadata",
    "PeerCredentials",
    "Server",
    "ServiceStub",
    "UnaryMethod",
    "require_same_user",
    "status_error",
]
