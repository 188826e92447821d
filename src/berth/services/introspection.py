"""containerd.services.introspection.v1.Introspection: plugins and server UUID."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from google.rpc import status_pb2

from berth import errdefs, filters, plugin
from berth.api.services.introspection.v1 import introspection_pb2 as pb
from berth.api.services.introspection.v1 import introspection_pb2_grpc as pb_grpc
from berth.api.types import platform_pb2


class _PluginAdaptor:
    """Filter fields of a plugin record: ``type`` and ``id``, as in containerd."""

    def __init__(self, p: pb.Plugin) -> None:
        self.p = p

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "type":
            return self.p.type, bool(self.p.type)
        if path[0] == "id":
            return self.p.id, bool(self.p.id)
        return "", False


def plugin_to_pb(p: plugin.Plugin) -> pb.Plugin:
    reg = p.registration
    out = pb.Plugin(
        type=reg.type,
        id=reg.id,
        requires=list(reg.requires),
        platforms=[
            platform_pb2.Platform(os=os_, architecture=arch, variant=var)
            for os_, arch, var in p.platforms
        ],
        exports=p.exports,
        capabilities=p.capabilities,
    )
    if p.error is not None:
        out.init_err.CopyFrom(
            status_pb2.Status(code=errdefs.code_of(p.error), message=str(p.error))
        )
    return out


class IntrospectionService(pb_grpc.IntrospectionServicer):
    def __init__(self, plugins: plugin.PluginSet, root: Path) -> None:
        self.plugins = plugins
        self.root = root
        self._lock = threading.Lock()

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_IntrospectionServicer_to_server(self, server)

    async def Plugins(self, request: pb.PluginsRequest, context: Any) -> pb.PluginsResponse:
        flt = filters.parse_all(list(request.filters))
        items = [plugin_to_pb(p) for p in self.plugins.ordered]
        return pb.PluginsResponse(plugins=[p for p in items if flt.match(_PluginAdaptor(p))])

    async def Server(self, request: empty_pb2.Empty, context: Any) -> pb.ServerResponse:
        return pb.ServerResponse(uuid=self.uuid())

    def uuid(self) -> str:
        """The daemon's identity, generated once and persisted under the root."""
        import uuid  # only `ctr version` and its like ask: kept out of boot

        path = self.root / "uuid"
        with self._lock:
            try:
                text = path.read_text().strip()
                uuid.UUID(text)
                return text
            except FileNotFoundError:
                pass
            except ValueError:
                raise errdefs.BerthError(
                    f"{path}: not a valid UUID; remove it to regenerate"
                ) from None
            value = str(uuid.uuid4())
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(value)
            os.replace(tmp, path)
            return value


def _init(ic: plugin.InitContext) -> IntrospectionService:
    return IntrospectionService(ic.plugins, ic.root)


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="introspection", init=_init, requires=(plugin.ALL,))
)
