"""Garbage collection: roots, label edges, leases, ingests, pluggable kinds, scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.content import Digest, LocalStore
from berth.core.metadata import gc
from berth.core.metadata.content import INGEST_EXPIRY
from berth.core.metadata.images import Image, make_target
from berth.core.metadata.leases import LeaseStore
from berth.core.metadata.plugin import Metadata

MT = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    m = Metadata(tmp_path / "meta.db", LocalStore(tmp_path / "content"))
    yield m
    m.close()


def put(
    md: Metadata, ns: str, data: bytes, lbls: dict[str, str] | None = None, **kw: object
) -> str:
    cs = md.require_content()
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    with cs.writer(ns, f"ref-{d}", total=len(data), **kw) as w:  # type: ignore[arg-type]
        w.write(data)
        w.commit(len(data), d, lbls)
    return d


def blob_exists(md: Metadata, d: str) -> bool:
    return Path(md.require_content().backend.blob_path(d)).exists()


def digests(md: Metadata, ns: str) -> set[str]:
    return {str(i.digest) for i in md.require_content().list(ns)}


def make_image(md: Metadata, ns: str, name: str) -> tuple[str, str, str]:
    """A manifest referencing a config and a layer through gc.ref labels."""
    config = put(md, ns, b"config-" + name.encode())
    layer = put(md, ns, b"layer-" + name.encode())
    manifest = put(
        md,
        ns,
        b"manifest-" + name.encode(),
        {
            "containerd.io/gc.ref.content.config": config,
            "containerd.io/gc.ref.content.l.0": layer,
        },
    )
    md.images.create(ns, Image(name, make_target(MT, manifest, 10)))
    return manifest, config, layer


def test_label_refs_follow_containerd_naming() -> None:
    refs = list(
        gc.label_refs(
            "ns",
            {
                "containerd.io/gc.ref.content": "sha256:a",
                "containerd.io/gc.ref.content.m.0": "sha256:b",
                "containerd.io/gc.ref.content/x": "sha256:c",
                "containerd.io/gc.ref.contentious": "sha256:no",
                "containerd.io/gc.ref.snapshot.overlayfs": "key1",
                "containerd.io/gc.ref.snapshot.native/n": "key2",
                "unrelated": "sha256:no",
            },
        )
    )
    assert set(refs) == {
        gc.Node("content", "ns", "sha256:a"),
        gc.Node("content", "ns", "sha256:b"),
        gc.Node("content", "ns", "sha256:c"),
        gc.Node("snapshot", "ns", "overlayfs/key1"),
        gc.Node("snapshot", "ns", "native/key2"),
    }


def test_image_keeps_its_graph_and_deleting_it_frees_blobs(md: Metadata) -> None:
    manifest, config, layer = make_image(md, "ns", "img:1")
    orphan = put(md, "ns", b"orphan")
    stats = md.collector.collect()
    assert stats.removed == {"content": 1}
    assert digests(md, "ns") == {manifest, config, layer}
    assert not blob_exists(md, orphan)
    assert all(blob_exists(md, d) for d in (manifest, config, layer))

    md.images.delete("ns", "img:1")
    md.collector.collect()
    assert digests(md, "ns") == set()
    assert not any(blob_exists(md, d) for d in (manifest, config, layer))


def test_blob_shared_by_two_namespaces_survives_one_deletion(md: Metadata) -> None:
    d = put(md, "a", b"shared")
    put(md, "b", b"shared")
    md.require_content().update("b", d, {"containerd.io/gc.root": "1"})
    md.require_content().delete("a", d)
    md.collector.collect()
    assert blob_exists(md, d)
    assert digests(md, "b") == {d}


def test_gc_root_label_protects_content(md: Metadata) -> None:
    d = put(md, "ns", b"rooted", {"containerd.io/gc.root": "2024-01-01T00:00:00Z"})
    md.collector.collect()
    assert digests(md, "ns") == {d}
    md.require_content().update("ns", d, {}, ["labels.containerd.io/gc.root"])
    md.collector.collect()
    assert digests(md, "ns") == set()
    assert not blob_exists(md, d)


def test_lease_protects_content_until_removed(md: Metadata) -> None:
    leases = LeaseStore(md)
    leases.create("ns", "hold", {})
    d = put(md, "ns", b"leased", lease="hold")
    md.collector.collect()
    assert digests(md, "ns") == {d}
    leases.delete("ns", "hold")
    md.collector.collect()
    assert digests(md, "ns") == set()
    assert not blob_exists(md, d)


def test_expired_lease_protects_nothing_and_is_removed(md: Metadata) -> None:
    leases = LeaseStore(md)
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    leases.create("ns", "old", {gc.LABEL_EXPIRE: past})
    leases.create("ns", "new", {gc.LABEL_EXPIRE: future})
    leases.create("ns", "odd", {gc.LABEL_EXPIRE: "not a time"})
    d_old = put(md, "ns", b"old", lease="old")
    d_new = put(md, "ns", b"new", lease="new")
    d_odd = put(md, "ns", b"odd", lease="odd")
    stats = md.collector.collect()
    assert stats.removed == {"content": 1, "lease": 1}
    assert [le.id for le in leases.list("ns")] == ["new", "odd"]
    assert digests(md, "ns") == {d_new, d_odd}
    assert not blob_exists(md, d_old)


def test_lease_resource_added_by_api_protects_content(md: Metadata) -> None:
    d = put(md, "ns", b"api")
    leases = LeaseStore(md)
    leases.create("ns", "manual", {})
    leases.add_resource("ns", "manual", "content", d)
    md.collector.collect()
    assert digests(md, "ns") == {d}


def test_stale_unleased_ingest_is_aborted(md: Metadata) -> None:
    cs = md.require_content()
    w = cs.writer("ns", "stale")
    w.write(b"partial")
    w.close()
    md.collector.collect()
    assert cs.status("ns", "stale").offset == 7
    later = datetime.now(UTC) + INGEST_EXPIRY + timedelta(minutes=1)
    stats = md.collector.collect(now=later)
    assert stats.removed == {"ingest": 1}
    with pytest.raises(errdefs.NotFound):
        cs.status("ns", "stale")
    assert cs.backend.list_statuses() == []


def test_leased_ingest_outlives_the_expiry(md: Metadata) -> None:
    LeaseStore(md).create("ns", "l", {})
    cs = md.require_content()
    w = cs.writer("ns", "kept", lease="l")
    w.write(b"partial")
    w.close()
    md.collector.collect(now=datetime.now(UTC) + INGEST_EXPIRY * 2)
    assert cs.status("ns", "kept").offset == 7


def test_backend_leftovers_are_swept_on_first_collection(md: Metadata) -> None:
    backend = md.require_content().backend
    data = b"left behind by a crash"
    with backend.open_writer("orphan-ingest") as w:
        w.write(b"x")
    with backend.open_writer("orphan-blob") as w:
        w.write(data)
        d = w.commit(len(data))
    md.collector.collect()
    assert not Path(backend.blob_path(d)).exists()
    assert backend.list_statuses() == []


class _FakeSnapshots:
    """A stand-in snapshots table showing another subsystem joining the graph."""

    name = gc.SNAPSHOT

    def __init__(self, keys: dict[str, str | None]) -> None:
        self.keys = keys  # "<snapshotter>/<key>" -> parent key or None
        self.cleaned = 0

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterable[gc.Node]:
        return ()

    def references(self, cur: sqlite3.Cursor, node: gc.Node) -> Iterable[gc.Node]:
        parent = self.keys.get(node.key)
        if parent:
            yield gc.Node(gc.SNAPSHOT, node.namespace, parent)

    def candidates(self, cur: sqlite3.Cursor) -> Iterable[gc.Node]:
        return [gc.Node(gc.SNAPSHOT, "ns", k) for k in self.keys]

    def remove(self, cur: sqlite3.Cursor, node: gc.Node) -> None:
        del self.keys[node.key]

    def cleanup(self) -> None:
        self.cleaned += 1


def test_registered_kind_joins_the_graph(md: Metadata) -> None:
    snaps = _FakeSnapshots(
        {"overlayfs/top": "overlayfs/base", "overlayfs/base": None, "overlayfs/loose": None}
    )
    md.collector.register(snaps)
    with pytest.raises(errdefs.AlreadyExists):
        md.collector.register(snaps)
    d = put(md, "ns", b"x")
    md.images.create(
        "ns",
        Image("img", make_target(MT, d, 1), {"containerd.io/gc.ref.snapshot.overlayfs": "top"}),
    )
    stats = md.collector.collect()
    assert set(snaps.keys) == {"overlayfs/top", "overlayfs/base"}
    assert stats.removed == {"snapshot": 1}
    assert snaps.cleaned == 1


def test_edges_to_unregistered_kinds_are_ignored(md: Metadata) -> None:
    d = put(md, "ns", b"x")
    md.images.create(
        "ns", Image("img", make_target(MT, d, 1), {"containerd.io/gc.ref.snapshot.native": "k"})
    )
    md.collector.collect()
    assert digests(md, "ns") == {d}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("0ms", 0.0), ("100ms", 0.1), ("1.5s", 1.5), ("1m30s", 90.0), ("250us", 0.00025)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert gc.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1x", "ms", "1s2"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        gc.parse_duration(text)


def test_parse_expiry() -> None:
    assert gc.parse_expiry("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert gc.parse_expiry("2024-01-02T03:04:05.123456789+00:00") is not None
    assert gc.parse_expiry("2024-01-02T03:04:05") is None
    assert gc.parse_expiry("soon") is None


def test_scheduler_collects_after_a_deletion_and_on_demand(md: Metadata) -> None:
    async def main() -> None:
        sched = gc.Scheduler(
            md.collector.collect, gc.SchedulerConfig(startup_delay=0.0, schedule_delay=0.0)
        )
        md.collector.register_mutation_callback(sched.on_mutation)
        sched.start()
        try:
            d = await asyncio.to_thread(put, md, "ns", b"gone soon")
            await asyncio.to_thread(md.require_content().delete, "ns", d)
            for _ in range(200):
                if sched.collections and not blob_exists(md, d):
                    break
                await asyncio.sleep(0.01)
            assert not blob_exists(md, d), "a deletion must schedule a collection"
            before = sched.collections
            stats = await sched.schedule_and_wait()
            assert sched.collections == before + 1
            assert stats.meta_seconds >= 0
            stats = await gc.collect_now(sched, md.collector)
            assert sched.collections == before + 2
        finally:
            await sched.close()
        assert not sched.running
        # Without a running scheduler, collect_now collects directly.
        await gc.collect_now(sched, md.collector)

    asyncio.run(main())


def test_digest_type_roundtrip(md: Metadata) -> None:
    d = put(md, "ns", b"typed")
    assert md.require_content().info("ns", Digest.parse(d)).digest == Digest.parse(d)


def test_gc_config_rejects_bad_durations() -> None:
    from berth.config import ConfigError, decode
    from berth.core.metadata.plugin import GCConfig

    cfg = decode(GCConfig, {"schedule_delay": "250ms", "pause_threshold": 0}, "p", "f.toml")
    sc = cfg.scheduler_config()
    assert (sc.schedule_delay, sc.pause_threshold, sc.startup_delay) == (0.25, 0, 0.1)
    with pytest.raises(ConfigError, match=r"p\.startup_delay: invalid duration"):
        decode(GCConfig, {"startup_delay": "soon"}, "p", "f.toml")
