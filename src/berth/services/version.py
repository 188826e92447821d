"""containerd.services.version.v1.Version: the daemon's version and revision."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

import berth
from berth import plugin
from berth.api.services.version.v1 import version_pb2, version_pb2_grpc

REVISION = "berth"


class VersionService(version_pb2_grpc.VersionServicer):
    def add_to_server(self, server: Any) -> None:
        version_pb2_grpc.add_VersionServicer_to_server(self, server)

    async def Version(self, request: empty_pb2.Empty, context: Any) -> version_pb2.VersionResponse:
        return version_pb2.VersionResponse(version=berth.__version__, revision=REVISION)


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="version", init=lambda ic: VersionService())
)
