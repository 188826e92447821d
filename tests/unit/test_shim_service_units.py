"""The shim's Task service around Shutdown: when it is accepted, and what a
server that accepted it still answers. Containers are fakes (no runc)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from types import SimpleNamespace

import pytest
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.shim import service as service_mod
from berth.shim.events import Publisher
from berth.shim.reaper import Reaper
from berth.shim.service import TaskService
from berth.ttrpc import CallContext, Client, Server


class _FakeContainer:
    """Stands in for :class:`berth.shim.container.Container`: its create
    waits for the test to let it finish, its delete succeeds."""

    release: asyncio.Event

    def __init__(self, *, id: str, bundle: str, **_: object) -> None:
        self.id = id
        self.bundle = bundle
        self.init = SimpleNamespace(pid=4242)

    async def create(self) -> None:
        await self.release.wait()

    async def delete(self, exec_id: str) -> SimpleNamespace:
        return SimpleNamespace(is_init=True, pid=self.init.pid, exit_status=0, exited_at=None)

    def find_pid(self, pid: int) -> None:
        return None


def _service(shutdowns: list[int]) -> TaskService:
    return TaskService(
        namespace="ns1",
        reaper=Reaper(),
        publisher=Publisher("", "ns1"),  # no address: events go nowhere
        state_dir="/nonexistent",
        on_shutdown=lambda: shutdowns.append(1),
    )


def _create(id: str) -> api.CreateTaskRequest:
    return api.CreateTaskRequest(id=id, bundle=f"/run/b/{id}")


def test_shutdown_waits_for_containers_and_creates_then_refuses_new_creates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_mod, "Container", _FakeContainer)
    ctx = CallContext(service_mod.SERVICE.full_name, "", {}, None, None)

    async def main() -> None:
        _FakeContainer.release = asyncio.Event()
        shutdowns: list[int] = []
        svc = _service(shutdowns)
        try:
            creating = asyncio.create_task(svc.Create(ctx, _create("c1")))
            await asyncio.sleep(0)
            # A create in flight: Shutdown is ignored, and the create completes.
            await svc.Shutdown(ctx, api.ShutdownRequest())
            _FakeContainer.release.set()
            assert (await creating).pid == 4242
            # A container served: still ignored.
            await svc.Shutdown(ctx, api.ShutdownRequest())
            await asyncio.sleep(0)
            assert shutdowns == []
            assert (await svc.Create(ctx, _create("c2"))).pid == 4242

            await svc.Delete(ctx, api.DeleteRequest(id="c1"))
            await svc.Delete(ctx, api.DeleteRequest(id="c2"))
            await svc.Shutdown(ctx, api.ShutdownRequest())
            await asyncio.sleep(0)
            assert shutdowns == [1]

            # Accepted: a Create on a connection opened before is refused,
            # and nothing of it is left behind.
            with pytest.raises(errdefs.Unavailable, match="shutting down"):
                await svc.Create(ctx, _create("c3"))
            assert svc.containers == {}
            # A repeated Shutdown does not run the shutdown again.
            await svc.Shutdown(ctx, api.ShutdownRequest())
            await asyncio.sleep(0)
            assert shutdowns == [1]
        finally:
            svc.close()

    asyncio.run(main())


def test_refused_create_goes_back_as_unavailable_over_ttrpc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refusal reaches a client as Unavailable, the code Berth's daemon
    also gets from a shim whose connection dropped."""
    monkeypatch.setattr(service_mod, "Container", _FakeContainer)

    async def main() -> None:
        _FakeContainer.release = asyncio.Event()
        _FakeContainer.release.set()
        shutdowns: list[int] = []
        svc = _service(shutdowns)
        d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
        path = os.path.join(d, "s.sock")
        server = Server()
        server.register_service(service_mod.SERVICE, svc)
        await server.start(path)
        client = await Client.connect(path, timeout=5)
        name = service_mod.SERVICE.full_name
        try:
            await client.call(name, "Shutdown", api.ShutdownRequest(), empty_pb2.Empty)
            with pytest.raises(errdefs.Unavailable, match="shutting down"):
                await client.call(name, "Create", _create("c1"), api.CreateTaskResponse)
            assert shutdowns == [1]
        finally:
            await client.close()
            await server.close()
            svc.close()
            os.rmdir(d)

    asyncio.run(main())
