"""The real ctr (Debian's containerd client) against berthd: version, namespaces, plugins."""

from __future__ import annotations

import re

import pytest

from tests.support.daemon import Berthd

pytestmark = pytest.mark.integration


def test_ctr_version_reports_berthd(shared_berthd: Berthd) -> None:
    import berth

    out = shared_berthd.ctr("version").stdout
    server = out.split("Server:", 1)[1]
    assert f"Version:  {berth.__version__}" in server
    uuid = re.search(r"UUID:\s+([0-9a-f-]{36})", server)
    assert uuid, out
    # The UUID is persisted: asking again gives the same identity.
    again = shared_berthd.ctr("version").stdout
    assert uuid.group(1) in again


def test_ctr_namespaces_lifecycle(shared_berthd: Berthd) -> None:
    d = shared_berthd
    d.ctr("namespaces", "create", "ns-life", "team=a", "tier=gold")
    ls = d.ctr("namespaces", "ls").stdout
    row = next(line for line in ls.splitlines() if line.startswith("ns-life"))
    assert "team=a" in row and "tier=gold" in row

    d.ctr("namespaces", "label", "ns-life", "tier=silver", "team=")
    row = next(
        line for line in d.ctr("namespaces", "ls").stdout.splitlines() if line.startswith("ns-life")
    )
    assert "tier=silver" in row and "team=" not in row

    d.ctr("namespaces", "rm", "ns-life")
    assert "ns-life" not in d.ctr("namespaces", "ls", "-q").stdout.split()


def test_ctr_namespace_create_duplicate_fails(shared_berthd: Berthd) -> None:
    d = shared_berthd
    d.ctr("namespaces", "create", "ns-dup")
    res = d.ctr("namespaces", "create", "ns-dup", check=False)
    assert res.returncode != 0
    assert "already exists" in res.stderr


def test_ctr_namespace_invalid_name_is_rejected(shared_berthd: Berthd) -> None:
    res = shared_berthd.ctr("namespaces", "create", "bad_name!", check=False)
    assert res.returncode != 0
    assert "must match" in res.stderr
    assert "bad_name!" not in shared_berthd.ctr("namespaces", "ls", "-q").stdout


def test_ctr_refuses_to_remove_namespace_in_use(shared_berthd: Berthd) -> None:
    d = shared_berthd
    d.ctr("namespaces", "create", "ns-busy")
    d.ctr("leases", "create", "--id", "hold", namespace="ns-busy")
    res = d.ctr("namespaces", "rm", "ns-busy", check=False)
    assert res.returncode != 0
    assert "must be empty" in res.stderr and "leases" in res.stderr
    assert "ns-busy" in d.ctr("namespaces", "ls", "-q").stdout.split()
    # Once empty, removal succeeds.
    d.ctr("leases", "rm", "hold", namespace="ns-busy")
    d.ctr("namespaces", "rm", "ns-busy")
    assert "ns-busy" not in d.ctr("namespaces", "ls", "-q").stdout.split()


def test_remove_unknown_namespace_is_not_found(shared_berthd: Berthd) -> None:
    import grpc

    from berth.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc

    with grpc.insecure_channel(f"unix://{shared_berthd.address}") as ch:
        stub = namespace_pb2_grpc.NamespacesStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Delete(namespace_pb2.DeleteNamespaceRequest(name="never-made"), timeout=10)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    # ctr deliberately treats NotFound on removal as done, as it does with containerd.
    assert shared_berthd.ctr("namespaces", "rm", "never-made").returncode == 0


def test_ctr_plugins_ls_shows_status(shared_berthd: Berthd) -> None:
    out = shared_berthd.ctr("plugins", "ls").stdout
    rows = {
        tuple(line.split()[:2]): line.split()[-1] for line in out.splitlines()[1:] if line.strip()
    }
    assert rows[("io.containerd.grpc.v1", "namespaces")] == "ok"
    assert rows[("io.containerd.grpc.v1", "introspection")] == "ok"
    assert rows[("io.containerd.metadata.v1", "sqlite")] == "ok"
    filtered = shared_berthd.ctr("plugins", "ls", "type==io.containerd.metadata.v1").stdout
    body = [line for line in filtered.splitlines()[1:] if line.strip()]
    assert body and all(line.startswith("io.containerd.metadata.v1") for line in body)


def test_ctr_leases_roundtrip(shared_berthd: Berthd) -> None:
    d = shared_berthd
    d.ctr("leases", "create", "--id", "l1", "--expires", "1h", "team=x", namespace="lease-ns")
    out = d.ctr("leases", "ls", namespace="lease-ns").stdout
    assert "l1" in out and "containerd.io/gc.expire" in out
    d.ctr("leases", "rm", "l1", namespace="lease-ns")
    assert "l1" not in d.ctr("leases", "ls", "-q", namespace="lease-ns").stdout


def test_ctr_lease_without_id_gets_a_generated_one(shared_berthd: Berthd) -> None:
    d = shared_berthd
    created = d.ctr("leases", "create", namespace="gen-id").stdout.strip()
    assert created
    assert created in d.ctr("leases", "ls", "-q", namespace="gen-id").stdout.split()
    d.ctr("leases", "rm", created, namespace="gen-id")
