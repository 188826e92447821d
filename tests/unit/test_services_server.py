"""services.server.WrappingServer: every service's handlers wrapped once, served
from one table, with berth errors mapped to containerd's codes over a real
grpc.aio server on a unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc import aio

from berth import errdefs
from berth.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from berth.api.services.version.v1 import version_pb2, version_pb2_grpc
from berth.services.server import WrappingServer


class _Version(version_pb2_grpc.VersionServicer):
    async def Version(self, request: Any, context: Any) -> version_pb2.VersionResponse:
        return version_pb2.VersionResponse(version="9.9")


class _Namespaces(namespace_pb2_grpc.NamespacesServicer):
    async def Get(self, request: Any, context: Any) -> Any:
        raise errdefs.NotFound(f"namespace {errdefs.go_quote(request.name)}: not found")


class _RecordingServer:
    """Only what the generated registration code calls."""

    def __init__(self) -> None:
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


def test_registered_methods_go_to_one_table_ahead_of_the_generic_handlers() -> None:
    server = _RecordingServer()
    services = WrappingServer(server)
    version_pb2_grpc.add_VersionServicer_to_server(_Version(), services)
    namespace_pb2_grpc.add_NamespacesServicer_to_server(_Namespaces(), services)
    # The recording server has no add_registered_method_handlers: reaching it
    # would fail. The table is registered first, then one handler per service.
    assert len(server.generic) == 3
    table = server.generic[0]
    for method in (
        "/containerd.services.version.v1.Version/Version",
        "/containerd.services.namespaces.v1.Namespaces/Get",
    ):
        assert table.service(SimpleNamespace(method=method)) is not None, method
    assert table.service(SimpleNamespace(method="/nope.Nope/Nope")) is None


def test_a_real_server_answers_and_maps_errors_to_codes(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"

    async def main() -> tuple[str, grpc.StatusCode, str]:
        server = aio.server()
        services = WrappingServer(server)
        version_pb2_grpc.add_VersionServicer_to_server(_Version(), services)
        namespace_pb2_grpc.add_NamespacesServicer_to_server(_Namespaces(), services)
        server.add_insecure_port(f"unix://{sock}")
        await server.start()
        try:
            async with aio.insecure_channel(f"unix://{sock}") as ch:
                got = await version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty())
                with pytest.raises(aio.AioRpcError) as err:
                    await namespace_pb2_grpc.NamespacesStub(ch).Get(
                        namespace_pb2.GetNamespaceRequest(name="x")
                    )
            return got.version, err.value.code(), err.value.details() or ""
        finally:
            await server.stop(None)

    version, code, details = asyncio.run(main())
    assert version == "9.9"
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == 'namespace "x": not found'
