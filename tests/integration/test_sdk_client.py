"""The SDK against a real berthd: the sync and async clients behave identically."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from berth import errdefs
from berth.client import AsyncClient, Client, Lease, Resource
from tests.support.daemon import Berthd, short_tmpdir

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32


def _stable(lease: Lease) -> tuple[str, dict[str, str]]:
    # created_at differs between two runs; everything else must not.
    return lease.id, {k: v for k, v in lease.labels.items() if k != "containerd.io/gc.expire"}


def sync_scenario(address: str, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(address, namespace=ns, timeout=10) as c:
        out["version"] = c.version()
        out["uuid"] = c.server_uuid()
        out["plugins"] = [
            (p.type, p.id, p.status) for p in c.plugins(["type==io.containerd.grpc.v1"])
        ]
        out["created"] = c.namespaces.create(ns, {"team": "a", "tier": "gold"})
        out["got"] = c.namespaces.get(ns)
        out["labelled"] = c.namespaces.label(ns, {"tier": "silver", "team": ""})
        out["replaced"] = c.namespaces.replace_labels(ns, {"only": "this"})
        out["listed"] = [n for n in c.namespaces.list() if n.name == ns]
        lease = c.leases.create("l1", expires=3600, labels={"owner": "sdk"})
        out["lease"] = _stable(lease)
        out["has_expiry"] = lease.expires_at is not None
        c.leases.create("l2")
        out["filtered"] = [_stable(le) for le in c.leases.list(["labels.owner==sdk"])]
        out["all_ids"] = sorted(le.id for le in c.leases.list())
        c.leases.add_resource("l1", Resource(DIGEST, "content"))
        c.leases.add_resource("l1", Resource("snap-1", "snapshots/overlayfs"))
        out["resources"] = sorted(c.leases.list_resources("l1"), key=lambda r: r.type)
        c.leases.delete_resource("l1", Resource(DIGEST, "content"))
        out["resources_after"] = c.leases.list_resources("l1")
        errors: list[tuple[str, str] | None] = []
        for call in (
            lambda: c.namespaces.delete(ns),
            lambda: c.namespaces.get("never-made-sdk"),
            lambda: c.namespaces.create(ns),
            lambda: c.namespaces.create("bad_name!"),
            lambda: c.leases.create("l1"),
            lambda: c.leases.list(["id=="]),
            lambda: c.leases.add_resource("l1", Resource("x", "nonsense")),
            lambda: c.leases.delete("no-such-lease"),
        ):
            try:
                call()
                errors.append(None)
            except errdefs.BerthError as exc:
                errors.append((type(exc).__name__, str(exc)))
        out["errors"] = errors
        c.leases.delete("l1")
        c.leases.delete("l2", sync=True)
        c.namespaces.delete(ns)
        out["gone"] = ns not in [n.name for n in c.namespaces.list()]
    return out


async def async_scenario(address: str, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AsyncClient(address, namespace=ns, timeout=10) as c:
        out["version"] = await c.version()
        out["uuid"] = await c.server_uuid()
        out["plugins"] = [
            (p.type, p.id, p.status) for p in await c.plugins(["type==io.containerd.grpc.v1"])
        ]
        out["created"] = await c.namespaces.create(ns, {"team": "a", "tier": "gold"})
        out["got"] = await c.namespaces.get(ns)
        out["labelled"] = await c.namespaces.label(ns, {"tier": "silver", "team": ""})
        out["replaced"] = await c.namespaces.replace_labels(ns, {"only": "this"})
        out["listed"] = [n for n in await c.namespaces.list() if n.name == ns]
        lease = await c.leases.create("l1", expires=3600, labels={"owner": "sdk"})
        out["lease"] = _stable(lease)
        out["has_expiry"] = lease.expires_at is not None
        await c.leases.create("l2")
        out["filtered"] = [_stable(le) for le in await c.leases.list(["labels.owner==sdk"])]
        out["all_ids"] = sorted(le.id for le in await c.leases.list())
        await c.leases.add_resource("l1", Resource(DIGEST, "content"))
        await c.leases.add_resource("l1", Resource("snap-1", "snapshots/overlayfs"))
        out["resources"] = sorted(await c.leases.list_resources("l1"), key=lambda r: r.type)
        await c.leases.delete_resource("l1", Resource(DIGEST, "content"))
        out["resources_after"] = await c.leases.list_resources("l1")
        errors: list[tuple[str, str] | None] = []
        calls: list[Callable[[], Any]] = [
            lambda: c.namespaces.delete(ns),
            lambda: c.namespaces.get("never-made-sdk"),
            lambda: c.namespaces.create(ns),
            lambda: c.namespaces.create("bad_name!"),
            lambda: c.leases.create("l1"),
            lambda: c.leases.list(["id=="]),
            lambda: c.leases.add_resource("l1", Resource("x", "nonsense")),
            lambda: c.leases.delete("no-such-lease"),
        ]
        for call in calls:
            try:
                await call()
                errors.append(None)
            except errdefs.BerthError as exc:
                errors.append((type(exc).__name__, str(exc)))
        out["errors"] = errors
        await c.leases.delete("l1")
        await c.leases.delete("l2", sync=True)
        await c.namespaces.delete(ns)
        out["gone"] = ns not in [n.name for n in await c.namespaces.list()]
    return out


def test_sync_and_async_clients_give_identical_results(shared_berthd: Berthd) -> None:
    sync = sync_scenario(shared_berthd.address, "sdk-parity")
    asyn = asyncio.run(async_scenario(shared_berthd.address, "sdk-parity"))
    assert sync == asyn

    # And the results are right, not merely equal.
    assert sync["uuid"] in shared_berthd.ctr("version").stdout
    assert ("io.containerd.grpc.v1", "leases", "ok") in sync["plugins"]
    assert sync["created"].labels == {"team": "a", "tier": "gold"}
    assert sync["got"] == sync["created"]
    assert sync["labelled"].labels == {"tier": "silver"}
    assert sync["replaced"].labels == {"only": "this"}
    assert sync["listed"] == [sync["replaced"]]
    assert sync["lease"] == ("l1", {"owner": "sdk"}) and sync["has_expiry"]
    assert sync["filtered"] == [sync["lease"]]
    assert sync["all_ids"] == ["l1", "l2"]
    assert sync["resources"] == [
        Resource(DIGEST, "content"),
        Resource("snap-1", "snapshots/overlayfs"),
    ]
    assert sync["resources_after"] == [Resource("snap-1", "snapshots/overlayfs")]
    kinds = [e[0] if e else None for e in sync["errors"]]
    assert kinds == [
        "FailedPrecondition",
        "NotFound",
        "AlreadyExists",
        "InvalidArgument",
        "AlreadyExists",
        "InvalidArgument",
        "InvalidArgument",
        "NotFound",
    ]
    assert "must be empty" in sync["errors"][0][1]
    assert sync["gone"]


def test_lease_context_manager_holds_and_releases(shared_berthd: Berthd) -> None:
    with Client(shared_berthd.address, namespace="sdk-cm") as c:
        with c.lease(labels={"purpose": "test"}) as leased:
            assert leased.lease_id is not None
            assert leased.namespace == "sdk-cm"
            held = {le.id: le for le in c.leases.list()}
            assert leased.lease_id in held
            assert held[leased.lease_id].labels["purpose"] == "test"
            assert held[leased.lease_id].expires_at is not None  # 24h by default
            # A nested lease reuses the outer one.
            with leased.lease() as inner:
                assert inner.lease_id == leased.lease_id
            assert leased.lease_id in [le.id for le in c.leases.list()]
            # ctr sees the same lease.
            ctr_ids = shared_berthd.ctr("leases", "ls", "-q", namespace="sdk-cm").stdout.split()
            assert leased.lease_id in ctr_ids
        assert c.leases.list() == []

        with pytest.raises(RuntimeError), c.lease("sdk-cm-err") as leased:
            raise RuntimeError("work failed")
        assert c.leases.list() == []

        # Deleting the lease early is fine: exit treats "already gone" as done.
        with c.lease("early") as leased:
            c.leases.delete("early")
        assert leased.lease_id == "early"


def test_async_lease_context_manager_holds_and_releases(shared_berthd: Berthd) -> None:
    async def main() -> None:
        async with AsyncClient(shared_berthd.address, namespace="sdk-acm") as c:
            async with c.lease("acm", expires=None) as leased:
                assert leased.lease_id == "acm"
                held = await c.leases.list(["id==acm"])
                assert [le.id for le in held] == ["acm"] and held[0].expires_at is None
            assert await c.leases.list() == []

    asyncio.run(main())


def test_views_share_the_connection_but_not_the_namespace(shared_berthd: Berthd) -> None:
    with Client(shared_berthd.address, namespace="sdk-view-a") as c:
        b = c.with_namespace("sdk-view-b")
        c.leases.create("in-a")
        b.leases.create("in-b")
        assert [le.id for le in c.leases.list()] == ["in-a"]
        assert [le.id for le in b.leases.list()] == ["in-b"]
        b.close()  # a view never closes the shared channel
        c.leases.delete("in-a")
        b.leases.delete("in-b")


def test_missing_daemon_is_unavailable_in_both_clients() -> None:
    base = short_tmpdir()
    sock = str(base / "absent.sock")
    try:
        with Client(sock) as c, pytest.raises(errdefs.Unavailable) as sync_err:
            c.version()

        async def main() -> str:
            async with AsyncClient(sock) as a:
                try:
                    await a.namespaces.list()
                except errdefs.Unavailable as exc:
                    return str(exc)
            raise AssertionError("expected Unavailable")

        async_msg = asyncio.run(main())
    finally:
        shutil.rmtree(base)
    assert str(sync_err.value) == async_msg
    assert async_msg == f"cannot connect to berthd at {sock}: No such file or directory"


def test_namespace_header_selects_the_namespace_ctr_sees(shared_berthd: Berthd) -> None:
    with Client(shared_berthd.address, namespace="sdk-hdr") as c:
        c.leases.create("hdr")
    assert shared_berthd.ctr("leases", "ls", "-q", namespace="sdk-hdr").stdout.split() == ["hdr"]
    assert "hdr" not in shared_berthd.ctr("leases", "ls", "-q").stdout.split()
    shared_berthd.ctr("leases", "rm", "hdr", namespace="sdk-hdr")
