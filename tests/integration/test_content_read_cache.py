"""Content.Read of small blobs, served from memory after the first read.

Whatever the cache holds, a read answers exactly what a read from disk
answers (offsets, sizes, out of range), another namespace still cannot read
the blob, and a deleted blob is NotFound at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from berth.api.services.content.v1 import content_pb2 as cpb
from berth.api.services.content.v1 import content_pb2_grpc as cgrpc
from berth.services.content import SMALL_BLOB, _SmallBlobs
from tests.integration.test_content_images_grpc import commit_blob, digest_of
from tests.support.daemon import Berthd

pytestmark = pytest.mark.integration

NS = (("containerd-namespace", "read-cache"),)
OTHER = (("containerd-namespace", "read-cache-other"),)


@pytest.fixture(scope="module")
def content(shared_berthd: Berthd) -> Iterator[cgrpc.ContentStub]:
    with grpc.insecure_channel(f"unix://{shared_berthd.address}") as ch:
        yield cgrpc.ContentStub(ch)


def read(stub: cgrpc.ContentStub, dg: str, offset: int = 0, size: int = 0) -> bytes:
    req = cpb.ReadContentRequest(digest=dg, offset=offset, size=size)
    return b"".join(r.data for r in stub.Read(req, metadata=NS))


@pytest.mark.parametrize("length", [0, 1, 4000, SMALL_BLOB, SMALL_BLOB + 1])
def test_repeated_reads_answer_as_the_first(content: cgrpc.ContentStub, length: int) -> None:
    data = os.urandom(length)
    dg = commit_blob(content, f"rc-{length}", data, md=NS)
    windows = [(0, 0), (0, 10), (3, 0), (length // 2, 7), (length, 0), (1, length * 2)]
    first = [read(content, dg, o, s) for o, s in windows if o <= length]
    again = [read(content, dg, o, s) for o, s in windows if o <= length]
    want = [data[o : (length if s <= 0 else min(length, o + s))] for o, s in windows if o <= length]
    assert first == want
    assert again == want
    with pytest.raises(grpc.RpcError) as err:
        read(content, dg, offset=length + 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_a_cached_blob_stays_private_to_its_namespace_and_goes_with_its_delete(
    content: cgrpc.ContentStub,
) -> None:
    data = b"small manifest-like blob"
    dg = commit_blob(content, "rc-private", data, md=NS)
    assert read(content, dg) == data
    assert read(content, dg) == data  # now from memory
    with pytest.raises(grpc.RpcError) as err:
        list(content.Read(cpb.ReadContentRequest(digest=dg), metadata=OTHER))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    content.Delete(cpb.DeleteContentRequest(digest=dg), metadata=NS)
    with pytest.raises(grpc.RpcError) as err:
        read(content, dg)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_cache_keeps_recent_blobs_within_its_byte_limit() -> None:
    cache = _SmallBlobs(limit=100)
    for i in range(5):
        cache.put(digest_of(bytes([i])), bytes(30))
    kept = [i for i in range(5) if cache.get(digest_of(bytes([i]))) is not None]
    assert kept == [2, 3, 4]
    cache.get(digest_of(bytes([2])))  # 2 is now the most recent
    cache.put("sha256:new", bytes(30))
    assert cache.get(digest_of(bytes([3]))) is None
    assert cache.get(digest_of(bytes([2]))) is not None
    cache.put("sha256:big", bytes(SMALL_BLOB + 1))
    assert cache.get("sha256:big") is None
