"""The Containers service against Debian's real ctr and raw gRPC.

Containers are created over gRPC here (``ctr containers create`` needs an
unpacked image, which is another subsystem's job); ctr then lists, inspects,
labels and removes them, and the garbage collector is shown to keep a
container's snapshot alive exactly as long as the container exists.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from berth import oci
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.snapshots.v1 import snapshots_pb2 as snap_pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as snap_grpc
from berth.core.metadata.containers import SPEC_TYPE_URL
from tests.support.daemon import Berthd

pytestmark = pytest.mark.integration

RUNTIME = "io.containerd.runc.v2"


@pytest.fixture(scope="module")
def channel(shared_berthd: Berthd) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{shared_berthd.address}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.ContainersStub:
    return pb_grpc.ContainersStub(channel)


def md(ns: str = "default", lease: str | None = None) -> tuple[tuple[str, str], ...]:
    if lease:
        return (("containerd-namespace", ns), ("containerd-lease", lease))
    return (("containerd-namespace", ns),)


@functools.cache
def spec_any() -> any_pb2.Any:
    # One spec serves every container: the store treats it as opaque bytes,
    # and generating it under an invalid id would fail before the request.
    spec = oci.generate("spec-template", "default", oci.with_process_args("/bin/true"))
    return any_pb2.Any(type_url=SPEC_TYPE_URL, value=oci.dumps(spec))


def make(
    stub: pb_grpc.ContainersStub,
    container_id: str,
    *,
    ns: str = "default",
    image: str = "",
    labels: dict[str, str] | None = None,
    snapshotter: str = "",
    snapshot_key: str = "",
) -> pb.Container:
    req = pb.CreateContainerRequest(
        container=pb.Container(
            id=container_id,
            image=image,
            labels=labels or {},
            runtime=pb.Container.Runtime(name=RUNTIME),
            spec=spec_any(),
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
        )
    )
    resp: pb.CreateContainerResponse = stub.Create(req, metadata=md(ns))
    return resp.container


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


def test_ctr_ls_info_label_rm(shared_berthd: Berthd, stub: pb_grpc.ContainersStub) -> None:
    d = shared_berthd
    made = make(stub, "ctr-web", image="docker.io/library/busybox:latest", labels={"tier": "f"})
    assert made.created_at.seconds > 0 and made.updated_at == made.created_at
    make(stub, "ctr-db")

    rows = [line.split() for line in d.ctr("containers", "ls").stdout.splitlines()]
    assert rows[0] == ["CONTAINER", "IMAGE", "RUNTIME"]
    assert ["ctr-db", "-", RUNTIME] in rows
    assert ["ctr-web", "docker.io/library/busybox:latest", RUNTIME] in rows
    # ctr's filters reach the store: labels and image, as containerd's adaptor has them.
    assert d.ctr("c", "ls", "-q", "labels.tier==f").stdout.split() == ["ctr-web"]
    assert d.ctr("c", "ls", "-q", "image~=busybox").stdout.split() == ["ctr-web"]
    assert "ctr-db" in d.ctr("c", "ls", "-q", f"runtime.name=={RUNTIME}").stdout.split()

    info = json.loads(d.ctr("containers", "info", "ctr-web").stdout)
    assert info["ID"] == "ctr-web"
    assert info["Runtime"]["Name"] == RUNTIME
    assert info["Labels"] == {"tier": "f"}
    # ctr decoded the stored Any back into a runtime spec.
    assert info["Spec"]["process"]["args"] == ["/bin/true"]
    spec = json.loads(d.ctr("containers", "info", "--spec", "ctr-web").stdout)
    assert spec["process"]["args"] == ["/bin/true"] and spec["ociVersion"] == oci.OCI_VERSION

    d.ctr("containers", "label", "ctr-web", "owner=ci", "tier=")
    info = json.loads(d.ctr("containers", "info", "ctr-web").stdout)
    assert info["Labels"] == {"owner": "ci"}
    assert info["UpdatedAt"] != info["CreatedAt"]

    d.ctr("containers", "rm", "ctr-web", "ctr-db")
    assert not {"ctr-web", "ctr-db"} & set(d.ctr("c", "ls", "-q").stdout.split())


def test_errors_carry_containerds_codes(
    shared_berthd: Berthd, stub: pb_grpc.ContainersStub
) -> None:
    make(stub, "err-dup")
    with pytest.raises(grpc.RpcError) as exc:
        make(stub, "err-dup")
    assert code_of(exc.value) == grpc.StatusCode.ALREADY_EXISTS
    assert 'container "err-dup": already exists' in exc.value.details()  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as exc:
        stub.Get(pb.GetContainerRequest(id="err-missing"), metadata=md())
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as exc:
        make(stub, "bad/id")
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "container.ID" in exc.value.details()  # type: ignore[attr-defined]

    no_spec = pb.Container(id="err-nospec", runtime=pb.Container.Runtime(name=RUNTIME))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Create(pb.CreateContainerRequest(container=no_spec), metadata=md())
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "container.Spec must be set" in exc.value.details()  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as exc:
        stub.Update(
            pb.UpdateContainerRequest(
                container=pb.Container(id="err-dup"),
                update_mask=field_mask_pb2.FieldMask(paths=["runtime"]),
            ),
            metadata=md(),
        )
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert 'cannot update "runtime" field on "err-dup"' in exc.value.details()  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as exc:
        stub.Update(pb.UpdateContainerRequest(container=pb.Container()), metadata=md())
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as exc:
        stub.List(pb.ListContainersRequest(filters=["id=="]), metadata=md())
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT

    # ctr shows the same failures.
    res = shared_berthd.ctr("containers", "info", "err-missing", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    res = shared_berthd.ctr("containers", "rm", "err-missing", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    shared_berthd.ctr("containers", "rm", "err-dup")


def test_namespace_with_a_container_cannot_be_deleted(
    shared_berthd: Berthd, stub: pb_grpc.ContainersStub
) -> None:
    d = shared_berthd
    make(stub, "ns-holder", ns="holding")
    res = d.ctr("namespaces", "rm", "holding", check=False)
    assert res.returncode != 0
    assert "containers" in res.stderr
    # The container is invisible from another namespace.
    assert "ns-holder" not in d.ctr("c", "ls", "-q").stdout.split()
    d.ctr("containers", "rm", "ns-holder", namespace="holding")
    d.ctr("namespaces", "rm", "holding")


def test_list_stream_and_update_mask(stub: pb_grpc.ContainersStub) -> None:
    make(stub, "upd-a", labels={"a": "1", "b": "2"})
    resp = stub.Update(
        pb.UpdateContainerRequest(
            container=pb.Container(id="upd-a", labels={"b": "", "c": "3"}, image="img:new"),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.b", "labels.c", "image"]),
        ),
        metadata=md(),
    )
    assert dict(resp.container.labels) == {"a": "1", "c": "3"}
    assert resp.container.image == "img:new"
    assert resp.container.runtime.name == RUNTIME  # untouched by a masked update

    # A full replace must repeat the immutable runtime name.
    full = pb.Container(id="upd-a", runtime=pb.Container.Runtime(name="other"), spec=spec_any())
    with pytest.raises(grpc.RpcError) as exc:
        stub.Update(pb.UpdateContainerRequest(container=full), metadata=md())
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "container.Runtime.Name field is immutable" in exc.value.details()  # type: ignore[attr-defined]

    streamed = [
        m.container.id
        for m in stub.ListStream(pb.ListContainersRequest(filters=["id==upd-a"]), metadata=md())
    ]
    assert streamed == ["upd-a"]
    stub.Delete(pb.DeleteContainerRequest(id="upd-a"), metadata=md())


def test_container_keeps_its_snapshot_through_gc(
    shared_berthd: Berthd, channel: grpc.Channel, stub: pb_grpc.ContainersStub
) -> None:
    d = shared_berthd
    leases = leases_pb2_grpc.LeasesStub(channel)
    snaps = snap_grpc.SnapshotsStub(channel)

    def collect() -> None:
        # Deleting a throwaway lease with --sync is how ctr forces a collection.
        d.ctr("leases", "create", "--id", "gc-kick")
        d.ctr("leases", "rm", "--sync", "gc-kick")

    def keys() -> list[str]:
        out = d.ctr("snapshots", "--snapshotter", "native", "ls").stdout.splitlines()[1:]
        return [line.split()[0] for line in out]

    # The snapshot is born under a lease, so nothing collects it before the
    # container exists.
    leases.Create(leases_pb2.CreateRequest(id="gc-setup"), metadata=md())
    snaps.Prepare(
        snap_pb.PrepareSnapshotRequest(snapshotter="native", key="gc-rootfs"),
        metadata=md(lease="gc-setup"),
    )
    make(stub, "gc-holder", snapshotter="native", snapshot_key="gc-rootfs")
    d.ctr("leases", "rm", "--sync", "gc-setup")
    assert "gc-rootfs" in keys()
    collect()
    assert "gc-rootfs" in keys()

    # ctr's --keep-snapshot leaves the snapshot to the collector alone.
    d.ctr("containers", "rm", "--keep-snapshot", "gc-holder")
    collect()
    assert "gc-rootfs" not in keys()
