"""What the SDK puts on the wire, seen by a real gRPC server that records each call.

berthd cannot show which metadata a client sent, so these tests serve the
containerd Leases and Version services from a small recording server on a unix
socket, and drive both clients against it.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.version.v1 import version_pb2, version_pb2_grpc
from berth.client import AsyncClient, Client
from tests.support.daemon import short_tmpdir

pytestmark = pytest.mark.integration


class Recorder(leases_pb2_grpc.LeasesServicer, version_pb2_grpc.VersionServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self.delay = 0.0

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() if k.startswith("containerd-")}
        with self.lock:
            self.calls.append((method, md))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_with is not None:
            context.abort(*self.fail_with)

    def Version(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Version", context)
        return version_pb2.VersionResponse(version="rec", revision="r")

    def Create(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Create", context)
        return leases_pb2.CreateResponse(
            lease=leases_pb2.Lease(id=request.id, labels=dict(request.labels))
        )

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Delete", context)
        return empty_pb2.Empty()

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("List", context)
        return leases_pb2.ListResponse()


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    base = short_tmpdir()
    address = str(base / "rec.sock")
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    leases_pb2_grpc.add_LeasesServicer_to_server(rec, server)
    version_pb2_grpc.add_VersionServicer_to_server(rec, server)
    server.add_insecure_port(f"unix:{address}")
    server.start()
    try:
        yield rec, address
    finally:
        server.stop(grace=None)
        shutil.rmtree(base)


def test_every_call_carries_the_namespace_and_leased_calls_the_lease(
    recorder: tuple[Recorder, str],
) -> None:
    rec, address = recorder
    with Client(address, namespace="wire") as c:
        c.version()
        with c.lease("L1") as leased:
            leased.leases.list()
            leased.with_namespace("other").version()
        c.leases.list()
    assert rec.calls == [
        ("Version", {"containerd-namespace": "wire"}),
        ("Create", {"containerd-namespace": "wire"}),
        ("List", {"containerd-namespace": "wire", "containerd-lease": "L1"}),
        ("Version", {"containerd-namespace": "other", "containerd-lease": "L1"}),
        ("Delete", {"containerd-namespace": "wire"}),
        ("List", {"containerd-namespace": "wire"}),
    ]


def test_async_client_sends_the_same_metadata(recorder: tuple[Recorder, str]) -> None:
    rec, address = recorder

    async def main() -> None:
        async with AsyncClient(address, namespace="wire") as c:
            await c.version()
            async with c.lease("L1") as leased:
                await leased.leases.list()
                await leased.with_namespace("other").version()
            await c.leases.list()

    asyncio.run(main())
    assert rec.calls == [
        ("Version", {"containerd-namespace": "wire"}),
        ("Create", {"containerd-namespace": "wire"}),
        ("List", {"containerd-namespace": "wire", "containerd-lease": "L1"}),
        ("Version", {"containerd-namespace": "other", "containerd-lease": "L1"}),
        ("Delete", {"containerd-namespace": "wire"}),
        ("List", {"containerd-namespace": "wire"}),
    ]


def test_lease_given_to_the_constructor_is_sent(recorder: tuple[Recorder, str]) -> None:
    rec, address = recorder
    with Client(address, namespace="n", lease="fixed") as c:
        c.version()
    assert rec.calls == [("Version", {"containerd-namespace": "n", "containerd-lease": "fixed"})]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, errdefs.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errdefs.AlreadyExists),
        (grpc.StatusCode.INVALID_ARGUMENT, errdefs.InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, errdefs.FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, errdefs.Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, errdefs.NotImplemented),
        (grpc.StatusCode.OUT_OF_RANGE, errdefs.OutOfRange),
        (grpc.StatusCode.INTERNAL, errdefs.BerthError),
    ],
)
def test_status_codes_become_errdefs_with_the_server_message(
    recorder: tuple[Recorder, str], status: grpc.StatusCode, expected: type[Exception]
) -> None:
    rec, address = recorder
    rec.fail_with = (status, f"server says {status.name}")
    with Client(address) as c, pytest.raises(errdefs.BerthError) as sync_err:
        c.version()

    async def main() -> errdefs.BerthError:
        async with AsyncClient(address) as a:
            try:
                await a.version()
            except errdefs.BerthError as exc:
                return exc
        raise AssertionError("expected an error")

    async_err = asyncio.run(main())
    for err in (sync_err.value, async_err):
        assert type(err) is expected
        assert str(err) == f"server says {status.name}"
        assert err.__cause__ is None and err.__context__ is None


def test_timeout_is_a_deadline_exceeded(recorder: tuple[Recorder, str]) -> None:
    rec, address = recorder
    rec.delay = 1.0
    with Client(address, timeout=0.2) as c, pytest.raises(errdefs.DeadlineExceeded):
        c.version()

    async def main() -> None:
        async with AsyncClient(address) as a:
            with pytest.raises(errdefs.DeadlineExceeded):
                await a.with_timeout(0.2).version()

    asyncio.run(main())
