"""The content and images services over real gRPC: leases, and containerd's error codes."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator

import grpc
import pytest

from berth.api.services.content.v1 import content_pb2 as cpb
from berth.api.services.content.v1 import content_pb2_grpc as cgrpc
from berth.api.services.images.v1 import images_pb2 as ipb
from berth.api.services.images.v1 import images_pb2_grpc as igrpc
from berth.api.services.leases.v1 import leases_pb2 as lpb
from berth.api.services.leases.v1 import leases_pb2_grpc as lgrpc
from berth.api.types import descriptor_pb2
from tests.support.daemon import Berthd

pytestmark = pytest.mark.integration

NS = (("containerd-namespace", "grpc-tests"),)
# Content nobody references is garbage at the next collection (which any
# deletion in the shared daemon may trigger), so test blobs are GC roots.
ROOT = {"containerd.io/gc.root": "test"}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def channel(shared_berthd: Berthd) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"unix://{shared_berthd.address}")
    yield ch
    ch.close()


@pytest.fixture
def content(channel: grpc.Channel) -> cgrpc.ContentStub:
    return cgrpc.ContentStub(channel)


def write(
    stub: cgrpc.ContentStub,
    reqs: list[cpb.WriteContentRequest],
    md: tuple[tuple[str, str], ...] = NS,
) -> list[cpb.WriteContentResponse]:
    return list(stub.Write(iter(reqs), metadata=md))


def commit_blob(
    stub: cgrpc.ContentStub,
    ref: str,
    data: bytes,
    md: tuple[tuple[str, str], ...] = NS,
    labels: dict[str, str] = ROOT,
) -> str:
    dg = digest_of(data)
    write(
        stub,
        [
            cpb.WriteContentRequest(
                action=cpb.COMMIT, ref=ref, total=len(data), expected=dg, data=data, labels=labels
            )
        ],
        md,
    )
    return dg


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


def test_write_stat_write_commit_conversation(content: cgrpc.ContentStub) -> None:
    data = b"0123456789" * 10
    dg = digest_of(data)
    resps = write(
        content,
        [
            cpb.WriteContentRequest(action=cpb.STAT, ref="conv", total=len(data), expected=dg),
            cpb.WriteContentRequest(action=cpb.WRITE, ref="conv", offset=0, data=data[:40]),
            cpb.WriteContentRequest(action=cpb.WRITE, ref="conv", offset=40, data=data[40:90]),
            cpb.WriteContentRequest(
                action=cpb.COMMIT, ref="conv", offset=90, data=data[90:], labels={"k": "v", **ROOT}
            ),
        ],
    )
    assert [r.action for r in resps] == [cpb.STAT, cpb.WRITE, cpb.WRITE, cpb.COMMIT]
    assert resps[0].total == len(data) and resps[0].offset == 0
    assert [r.offset for r in resps[1:]] == [40, 90, 100]
    assert resps[-1].digest == dg
    info = content.Info(cpb.InfoRequest(digest=dg), metadata=NS).info
    assert (info.size, dict(info.labels)) == (len(data), {"k": "v", **ROOT})
    # Read the middle, and with size 0 meaning "to the end".
    chunks = content.Read(cpb.ReadContentRequest(digest=dg, offset=10, size=20), metadata=NS)
    assert b"".join(c.data for c in chunks) == data[10:30]
    chunks = content.Read(cpb.ReadContentRequest(digest=dg, offset=95), metadata=NS)
    assert b"".join(c.data for c in chunks) == data[95:]
    # Writing what the namespace already has is ALREADY_EXISTS, as in containerd.
    with pytest.raises(grpc.RpcError) as exc:
        write(content, [cpb.WriteContentRequest(action=cpb.STAT, ref="again", expected=dg)])
    assert code_of(exc.value) == grpc.StatusCode.ALREADY_EXISTS


def test_commit_with_wrong_digest_is_failed_precondition(content: cgrpc.ContentStub) -> None:
    data = b"some bytes"
    wrong = digest_of(b"other bytes")
    with pytest.raises(grpc.RpcError) as exc:
        write(
            content,
            [cpb.WriteContentRequest(action=cpb.COMMIT, ref="wrong", expected=wrong, data=data)],
        )
    assert code_of(exc.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "unexpected commit digest" in exc.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as exc:
        content.Info(cpb.InfoRequest(digest=digest_of(data)), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND
    st = content.Status(cpb.StatusRequest(ref="wrong"), metadata=NS).status
    assert st.offset == len(data)
    content.Abort(cpb.AbortRequest(ref="wrong"), metadata=NS)
    with pytest.raises(grpc.RpcError) as exc:
        content.Status(cpb.StatusRequest(ref="wrong"), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        content.Abort(cpb.AbortRequest(ref="wrong"), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND


def test_commit_with_wrong_size_is_failed_precondition(content: cgrpc.ContentStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        write(
            content,
            [cpb.WriteContentRequest(action=cpb.COMMIT, ref="size", total=99, data=b"short")],
        )
    assert code_of(exc.value) == grpc.StatusCode.FAILED_PRECONDITION


def test_write_at_wrong_offset_is_out_of_range(content: cgrpc.ContentStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        write(
            content,
            [
                cpb.WriteContentRequest(action=cpb.WRITE, ref="off", data=b"abc"),
                cpb.WriteContentRequest(action=cpb.WRITE, ref="off", offset=7, data=b"x"),
            ],
        )
    assert code_of(exc.value) == grpc.StatusCode.OUT_OF_RANGE
    assert "write @7 must occur at current offset 3" in exc.value.details()  # type: ignore[attr-defined]
    content.Abort(cpb.AbortRequest(ref="off"), metadata=NS)


def test_read_past_the_end_is_out_of_range(content: cgrpc.ContentStub) -> None:
    dg = commit_blob(content, "short-read", b"12345")
    with pytest.raises(grpc.RpcError) as exc:
        list(content.Read(cpb.ReadContentRequest(digest=dg, offset=6), metadata=NS))
    assert code_of(exc.value) == grpc.StatusCode.OUT_OF_RANGE
    assert "read past object length 5 bytes" in exc.value.details()  # type: ignore[attr-defined]
    # Reading exactly at the end yields nothing, without error.
    assert list(content.Read(cpb.ReadContentRequest(digest=dg, offset=5), metadata=NS)) == []


@pytest.mark.parametrize("digest", ["md5:" + "0" * 32, "sha256:xyz", "", "nocolon"])
def test_bad_digests_are_invalid_argument(content: cgrpc.ContentStub, digest: str) -> None:
    calls = [
        lambda: content.Info(cpb.InfoRequest(digest=digest), metadata=NS),
        lambda: content.Delete(cpb.DeleteContentRequest(digest=digest), metadata=NS),
        lambda: list(content.Read(cpb.ReadContentRequest(digest=digest), metadata=NS)),
        lambda: content.Update(
            cpb.UpdateRequest(info=cpb.Info(digest=digest, labels={"a": "b"})), metadata=NS
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_content_is_not_found(content: cgrpc.ContentStub) -> None:
    missing = digest_of(b"never written")
    with pytest.raises(grpc.RpcError) as exc:
        content.Info(cpb.InfoRequest(digest=missing), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        content.Delete(cpb.DeleteContentRequest(digest=missing), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND


def test_first_write_message_needs_a_ref(content: cgrpc.ContentStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        write(content, [cpb.WriteContentRequest(action=cpb.STAT)])
    assert code_of(exc.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must have a reference" in exc.value.details()  # type: ignore[attr-defined]


def test_locked_ref_is_unavailable(content: cgrpc.ContentStub) -> None:
    q: queue.Queue[cpb.WriteContentRequest | None] = queue.Queue()

    def requests() -> Iterator[cpb.WriteContentRequest]:
        while (item := q.get()) is not None:
            yield item

    q.put(cpb.WriteContentRequest(action=cpb.WRITE, ref="locked", data=b"held"))
    first = content.Write(requests(), metadata=NS)
    assert next(first).offset == 4  # the first stream now holds the ref
    try:
        with pytest.raises(grpc.RpcError) as exc:
            write(content, [cpb.WriteContentRequest(action=cpb.STAT, ref="locked")])
        assert code_of(exc.value) == grpc.StatusCode.UNAVAILABLE
        assert "locked" in exc.value.details()  # type: ignore[attr-defined]
    finally:
        q.put(None)
        list(first)
    # Once the first stream ends, the ref can be resumed where it stopped.
    resp = write(content, [cpb.WriteContentRequest(action=cpb.STAT, ref="locked")])
    assert resp[0].offset == 4
    content.Abort(cpb.AbortRequest(ref="locked"), metadata=NS)


def test_list_statuses_filters_by_ref(content: cgrpc.ContentStub) -> None:
    for ref in ("active-1", "active-2"):
        write(content, [cpb.WriteContentRequest(action=cpb.WRITE, ref=ref, data=b"x")])
    got = content.ListStatuses(cpb.ListStatusesRequest(filters=["ref==active-2"]), metadata=NS)
    assert [s.ref for s in got.statuses] == ["active-2"]
    other = content.ListStatuses(
        cpb.ListStatusesRequest(), metadata=(("containerd-namespace", "grpc-other"),)
    )
    assert not [s for s in other.statuses if s.ref.startswith("active-")]
    for ref in ("active-1", "active-2"):
        content.Abort(cpb.AbortRequest(ref=ref), metadata=NS)


def test_list_is_streamed_in_batches(content: cgrpc.ContentStub) -> None:
    md = (("containerd-namespace", "grpc-batches"),)
    for i in range(105):
        commit_blob(content, f"b{i}", f"batch blob {i}".encode(), md)
    pages = list(content.List(cpb.ListContentRequest(), metadata=md))
    assert [len(p.info) for p in pages] == [100, 5]


def test_lease_protects_content_until_deleted(
    shared_berthd: Berthd, channel: grpc.Channel, content: cgrpc.ContentStub
) -> None:
    leases = lgrpc.LeasesStub(channel)
    leases.Create(lpb.CreateRequest(id="protect"), metadata=NS)
    leased_md = (*NS, ("containerd-lease", "protect"))
    dg = commit_blob(content, "leased", b"protected by a lease", leased_md, labels={})
    resources = leases.ListResources(lpb.ListResourcesRequest(id="protect"), metadata=NS)
    assert [(r.type, r.id) for r in resources.resources] == [("content", dg)]
    blob = (
        shared_berthd.root
        / "io.containerd.content.v1.content"
        / "blobs"
        / "sha256"
        / dg.removeprefix("sha256:")
    )
    # Force a collection: the lease keeps the blob.
    leases.Create(lpb.CreateRequest(id="trigger"), metadata=NS)
    leases.Delete(lpb.DeleteRequest(id="trigger", sync=True), metadata=NS)
    assert content.Info(cpb.InfoRequest(digest=dg), metadata=NS).info.digest == dg
    assert blob.exists()
    leases.Delete(lpb.DeleteRequest(id="protect", sync=True), metadata=NS)
    with pytest.raises(grpc.RpcError) as exc:
        content.Info(cpb.InfoRequest(digest=dg), metadata=NS)
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND
    assert not blob.exists()
    # Writing under a lease that does not exist is NOT_FOUND.
    with pytest.raises(grpc.RpcError) as exc:
        commit_blob(content, "x", b"y", (*NS, ("containerd-lease", "missing")))
    assert code_of(exc.value) == grpc.StatusCode.NOT_FOUND


def test_image_service_errors(channel: grpc.Channel) -> None:
    images = igrpc.ImagesStub(channel)
    target = descriptor_pb2.Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json", digest=digest_of(b"m"), size=1
    )
    images.Create(ipb.CreateImageRequest(image=ipb.Image(name="img:1", target=target)), metadata=NS)
    cases = [
        (
            lambda: images.Create(
                ipb.CreateImageRequest(image=ipb.Image(name="img:1", target=target)), metadata=NS
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            lambda: images.Create(
                ipb.CreateImageRequest(image=ipb.Image(target=target)), metadata=NS
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: images.Create(
                ipb.CreateImageRequest(
                    image=ipb.Image(
                        name="bad",
                        target=descriptor_pb2.Descriptor(media_type="x", digest="md5:00", size=1),
                    )
                ),
                metadata=NS,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: images.Get(ipb.GetImageRequest(name="missing"), metadata=NS),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: images.Delete(ipb.DeleteImageRequest(name="missing"), metadata=NS),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: images.List(ipb.ListImagesRequest(filters=["name=="]), metadata=NS),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: images.Get(ipb.GetImageRequest(name="img:1")),
            grpc.StatusCode.FAILED_PRECONDITION,  # no namespace
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert code_of(exc.value) == code, exc.value
    got = images.Get(ipb.GetImageRequest(name="img:1"), metadata=NS).image
    assert got.target.digest == target.digest and got.created_at.seconds > 0
    images.Delete(ipb.DeleteImageRequest(name="img:1", sync=True), metadata=NS)


def test_concurrent_writers_of_distinct_refs(content: cgrpc.ContentStub) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            commit_blob(content, f"par-{i}", f"parallel {i}".encode() * 1000)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
