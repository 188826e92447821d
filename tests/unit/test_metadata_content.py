"""The namespaced content layer: records, ingests, sharing policy, leases."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.content import Digest, LocalStore
from berth.core.metadata.leases import LeaseStore
from berth.core.metadata.namespaces import NamespaceStore
from berth.core.metadata.plugin import Metadata

DATA = b"hello berth content"
DGST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def _md(tmp_path: Path, *, shared: bool = True) -> Metadata:
    return Metadata(tmp_path / "meta.db", LocalStore(tmp_path / "content"), shared=shared)


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    m = _md(tmp_path)
    yield m
    m.close()


def put(md: Metadata, ns: str, data: bytes = DATA, *, ref: str = "r", **kw: object) -> Digest:
    cs = md.require_content()
    with cs.writer(ns, ref, total=len(data), **kw) as w:  # type: ignore[arg-type]
        w.write(data)
        return w.commit(len(data), "sha256:" + hashlib.sha256(data).hexdigest())


def test_commit_creates_a_namespaced_record_with_labels(md: Metadata) -> None:
    cs = md.require_content()
    with cs.writer("ns1", "r1", total=len(DATA)) as w:
        w.write(DATA)
        d = w.commit(len(DATA), DGST, {"a": "1"})
    assert str(d) == DGST
    info = cs.info("ns1", DGST)
    assert (info.size, info.labels) == (len(DATA), {"a": "1"})
    with pytest.raises(errdefs.NotFound, match="content digest"):
        cs.info("ns2", DGST)
    with pytest.raises(errdefs.NotFound):
        cs.reader_at("ns2", DGST)
    with cs.reader_at("ns1", DGST) as ra:
        assert ra.read_at(0, 100) == DATA
    # The ingest is consumed by the commit.
    assert cs.list_statuses("ns1") == []


def test_wrong_digest_commits_nothing_and_keeps_the_ingest(md: Metadata) -> None:
    cs = md.require_content()
    w = cs.writer("ns1", "bad", total=len(DATA))
    w.write(DATA)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit digest"):
        w.commit(len(DATA), wrong)
    assert cs.list("ns1") == []
    assert cs.status("ns1", "bad").offset == len(DATA)
    w.close()


def test_wrong_size_is_failed_precondition(md: Metadata) -> None:
    cs = md.require_content()
    w = cs.writer("ns1", "short", total=0)
    w.write(DATA)
    with pytest.raises(errdefs.FailedPrecondition, match="failed size validation"):
        w.commit(len(DATA) + 1, DGST)
    assert cs.list("ns1") == []


def test_bad_digest_algorithm_is_invalid_argument(md: Metadata) -> None:
    cs = md.require_content()
    with pytest.raises(errdefs.InvalidArgument, match="unsupported digest algorithm"):
        cs.info("ns1", "md5:" + "0" * 32)
    with pytest.raises(errdefs.InvalidArgument):
        cs.writer("ns1", "r", expected="sha999:abc")


def test_writer_for_content_already_present_is_already_exists(md: Metadata) -> None:
    put(md, "ns1")
    with pytest.raises(errdefs.AlreadyExists):
        md.require_content().writer("ns1", "again", expected=DGST)


def test_shared_policy_lets_another_namespace_commit_without_data(md: Metadata) -> None:
    put(md, "ns1")
    cs = md.require_content()
    w = cs.writer("ns2", "r", total=len(DATA), expected=DGST)
    assert w.status().offset == len(DATA)
    assert w.commit(len(DATA), DGST) == Digest.parse(DGST)
    assert cs.info("ns2", DGST).size == len(DATA)


def test_isolated_policy_requires_the_bytes(tmp_path: Path) -> None:
    md = _md(tmp_path, shared=False)
    try:
        put(md, "ns1")
        cs = md.require_content()
        w = cs.writer("ns2", "r", total=len(DATA), expected=DGST)
        assert w.status().offset == 0
        with pytest.raises(errdefs.FailedPrecondition):
            w.commit(len(DATA), DGST)  # nothing written
        w = cs.writer("ns2", "r", total=len(DATA), expected=DGST)
        w.write(DATA)
        w.commit(len(DATA), DGST)
        assert cs.info("ns2", DGST).size == len(DATA)
    finally:
        md.close()


def test_ingests_are_namespaced(md: Metadata) -> None:
    cs = md.require_content()
    w1 = cs.writer("ns1", "same-ref")
    w1.write(b"one")
    # The same ref in another namespace is a different ingest, not a lock conflict.
    w2 = cs.writer("ns2", "same-ref")
    w2.write(b"second")
    assert cs.status("ns1", "same-ref").offset == 3
    assert cs.status("ns2", "same-ref").offset == 6
    with pytest.raises(errdefs.Unavailable, match="locked"):
        cs.writer("ns1", "same-ref")
    w1.close()
    w2.close()
    assert [s.ref for s in cs.list_statuses("ns1", ["ref==same-ref"])] == ["same-ref"]
    assert cs.list_statuses("ns1", ["ref==other"]) == []
    cs.abort("ns1", "same-ref")
    with pytest.raises(errdefs.NotFound, match="reference same-ref"):
        cs.status("ns1", "same-ref")
    assert cs.status("ns2", "same-ref").offset == 6
    with pytest.raises(errdefs.NotFound):
        cs.abort("ns1", "same-ref")


def test_update_labels_by_field_path(md: Metadata) -> None:
    put(md, "ns1")
    cs = md.require_content()
    cs.update("ns1", DGST, {"a": "1", "b": "2"})
    info = cs.update("ns1", DGST, {"b": "", "c": "3"}, ["labels.b", "labels.c"])
    assert info.labels == {"a": "1", "c": "3"}
    assert cs.info("ns1", DGST).labels == {"a": "1", "c": "3"}
    with pytest.raises(errdefs.InvalidArgument, match='cannot update "size"'):
        cs.update("ns1", DGST, {}, ["size"])
    with pytest.raises(errdefs.InvalidArgument, match=r"info\.Labels"):
        cs.update("ns1", DGST, {"k": "x" * 5000}, ["labels.k"])
    with pytest.raises(errdefs.NotFound):
        cs.update("ns2", DGST, {"a": "1"})


def test_list_filters_by_digest_and_labels(md: Metadata) -> None:
    cs = md.require_content()
    d1 = put(md, "ns1", b"one", ref="1")
    d2 = put(md, "ns1", b"two", ref="2")
    cs.update("ns1", d2, {"kind": "layer"})
    assert [i.digest for i in cs.list("ns1")] == sorted([d1, d2], key=str)
    assert [i.digest for i in cs.list("ns1", [f"digest=={d1}"])] == [d1]
    assert [i.digest for i in cs.list("ns1", ["labels.kind==layer"])] == [d2]
    assert [i.digest for i in cs.list("ns1", ["labels.kind"])] == [d2]
    with pytest.raises(errdefs.InvalidArgument):
        cs.list("ns1", ["labels.kind=="])


def test_delete_removes_the_record_but_not_the_blob(md: Metadata) -> None:
    cs = md.require_content()
    put(md, "ns1")
    put(md, "ns2")
    cs.delete("ns1", DGST)
    with pytest.raises(errdefs.NotFound):
        cs.info("ns1", DGST)
    assert cs.info("ns2", DGST).size == len(DATA)
    assert Path(cs.backend.blob_path(DGST)).exists()
    with pytest.raises(errdefs.NotFound):
        cs.delete("ns1", DGST)


def test_leased_writes_become_lease_resources(md: Metadata) -> None:
    leases = LeaseStore(md)
    leases.create("ns1", "l1", {})
    cs = md.require_content()
    w = cs.writer("ns1", "leased", lease="l1")
    assert leases.list_resources("ns1", "l1") == [("ingests", "leased")]
    w.write(DATA)
    w.commit(len(DATA), DGST)
    assert leases.list_resources("ns1", "l1") == [("content", DGST)]
    with pytest.raises(errdefs.NotFound, match='lease "nope" does not exist'):
        cs.writer("ns1", "x", lease="nope")
    # Asking to write existing content under a lease adds it to that lease.
    leases.create("ns1", "l2", {})
    with pytest.raises(errdefs.AlreadyExists):
        cs.writer("ns1", "y", expected=DGST, lease="l2")
    assert leases.list_resources("ns1", "l2") == [("content", DGST)]


def test_namespace_with_blobs_cannot_be_deleted(md: Metadata) -> None:
    put(md, "busy")
    with pytest.raises(errdefs.FailedPrecondition, match="blobs"):
        NamespaceStore(md).delete("busy")
    md.require_content().delete("busy", DGST)
    NamespaceStore(md).delete("busy")


def test_unsharing_a_shared_ingest_on_write(md: Metadata) -> None:
    put(md, "ns1")
    cs = md.require_content()
    w = cs.writer("ns2", "r", expected=DGST)
    # A client restarting the upload from offset 0 truncates, then writes.
    w.truncate(0)
    assert w.status().offset == 0
    w.write(DATA)
    assert w.commit(len(DATA), DGST) == Digest.parse(DGST)
