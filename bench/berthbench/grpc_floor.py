"""A gRPC server that does nothing: the transport floor under berthd.

Run as ``python -m bench.berthbench.grpc_floor SOCKET``. It serves
containerd's ``Version`` method with an empty answer from a ``grpc.aio``
server on uvloop, configured as berthd configures its own, with no
service, plugin or store behind it, and prints ``ready`` once it listens.
Its RSS is what a Python daemon on grpcio holds before any work of its
own, and its CPU per call is what every call to berthd costs before a
handler runs; the harness reports both as floor rows.
"""

from __future__ import annotations

import sys

import grpc
import uvloop
from grpc import aio

METHOD = "Version"
SERVICE = "containerd.services.version.v1.Version"


async def _version(request: bytes, context: aio.ServicerContext) -> bytes:
    return b""  # an empty VersionResponse: version and revision unset


async def serve(address: str) -> None:
    server = aio.server()
    # No (de)serializers: the bytes pass through, so protobuf is not even loaded.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_version)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{address}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
