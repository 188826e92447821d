"""Container records: validation, field-mask updates, filters, namespacing and GC edges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.metadata.containers import (
    SPEC_TYPE_URL,
    AnyValue,
    Container,
    ContainerKind,
    ContainerStore,
    Runtime,
    validate,
)
from berth.core.metadata.db import DB
from berth.core.metadata.gc import Collector, LeaseKind
from berth.core.metadata.namespaces import NamespaceStore
from berth.core.snapshots.metadata import MetadataSnapshotter, SnapshotKind
from berth.core.snapshots.native import NativeSnapshotter

RUNC = "io.containerd.runc.v2"
SPEC = AnyValue.spec(b'{"ociVersion":"1.0.2-dev"}')


def box(cid: str, **kw: object) -> Container:
    fields: dict[str, object] = {"runtime": Runtime(RUNC), "spec": SPEC}
    fields.update(kw)
    return Container(cid, **fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DB]:
    d = DB(tmp_path / "meta.db")
    yield d
    d.close()


@pytest.fixture
def store(db: DB) -> ContainerStore:
    return ContainerStore(db)


def test_create_get_roundtrips_every_field(store: ContainerStore) -> None:
    opts = AnyValue("containerd.runc.v1.Options", b"\x08\x01")
    made = store.create(
        "ns",
        box(
            "web",
            runtime=Runtime(RUNC, opts),
            labels={"a": "1", "gone": ""},
            image="docker.io/library/busybox:latest",
            snapshotter="overlayfs",
            snapshot_key="web-root",
            extensions={"ext": AnyValue("t/x", b"\x00\xff")},
        ),
    )
    assert made.created_at is not None and made.created_at == made.updated_at
    got = store.get("ns", "web")
    assert got == made
    assert got.runtime.options == opts
    assert got.spec == SPEC and got.spec.type_url == SPEC_TYPE_URL
    # An empty label value means "no such label", as containerd stores them.
    assert got.labels == {"a": "1"}
    assert got.extensions == {"ext": AnyValue("t/x", b"\x00\xff")}
    assert store.get("ns", "web").runtime.options is not None
    assert store.create("ns", box("bare")).runtime.options is None
    assert store.get("ns", "bare").runtime.options is None


def test_ids_are_unique_per_namespace_only(store: ContainerStore) -> None:
    store.create("a", box("c"))
    store.create("b", box("c"))
    with pytest.raises(errdefs.AlreadyExists, match='container "c": already exists'):
        store.create("a", box("c"))
    store.delete("a", "c")
    with pytest.raises(errdefs.NotFound, match='container "c" in namespace "a": not found'):
        store.get("a", "c")
    assert store.get("b", "c").id == "c"
    with pytest.raises(errdefs.NotFound, match="container c: not found"):
        store.delete("a", "c")


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (box(""), "container.ID: identifier must not be empty"),
        (box("a/b"), "container.ID: identifier 'a/b' must match"),
        (box("x" * 77), "greater than maximum length"),
        (box("c", runtime=Runtime("")), "container.Runtime.Name must be set"),
        (box("c", spec=None), "container.Spec must be set"),
        (
            box("c", snapshot_key="k"),
            "container.Snapshotter must be set if container.SnapshotKey is set",
        ),
        (box("c", labels={"": "v"}), "containers.Labels: label key must not be empty"),
        (box("c", labels={"k": "v" * 4096}), "containers.Labels: label key and value length"),
        (
            box("c", extensions={"": AnyValue("t")}),
            "container.Extension keys must not be zero-length",
        ),
    ],
)
def test_validation_matches_containerd(
    store: ContainerStore, container: Container, message: str
) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        validate(container)
    with pytest.raises(errdefs.InvalidArgument, match="create container failed validation: "):
        store.create("ns", container)
    assert store.list("ns") == []


def test_snapshotter_without_key_and_empty_spec_payload_are_valid() -> None:
    validate(box("c", snapshotter="native"))
    # Presence is what counts: an Any with no bytes is still a spec.
    validate(box("c", spec=AnyValue(SPEC_TYPE_URL)))


def test_update_with_paths_changes_only_what_they_name(store: ContainerStore) -> None:
    store.create(
        "ns",
        box(
            "c",
            labels={"a": "1", "b": "2"},
            image="img:1",
            snapshotter="native",
            snapshot_key="k1",
            extensions={"x": AnyValue("t/x", b"1"), "y": AnyValue("t/y", b"2")},
        ),
    )
    request = box(
        "c",
        runtime=Runtime("ignored"),
        spec=AnyValue.spec(b"{}"),
        labels={"b": "", "c": "3"},
        image="img:2",
        snapshotter="ignored",
        snapshot_key="k2",
        extensions={"x": AnyValue("t/x", b"9")},
    )
    out = store.update("ns", request, ["labels.b", "labels.c", "extensions.x", "extensions.y"])
    assert out.labels == {"a": "1", "c": "3"}
    assert out.extensions == {"x": AnyValue("t/x", b"9")}
    assert (out.image, out.snapshot_key, out.spec) == ("img:1", "k1", SPEC)
    out = store.update("ns", request, ["image", "snapshotkey", "spec"])
    assert (out.image, out.snapshot_key, out.spec) == ("img:2", "k2", AnyValue.spec(b"{}"))
    # Immutable fields never move, whatever the request says.
    assert (out.runtime.name, out.snapshotter) == (RUNC, "native")
    out = store.update("ns", request, ["labels", "extensions"])
    assert out.labels == {"c": "3"}
    assert out.extensions == {"x": AnyValue("t/x", b"9")}
    got = store.get("ns", "c")
    assert got == out
    assert got.updated_at is not None and got.created_at is not None
    assert got.updated_at > got.created_at


@pytest.mark.parametrize("path", ["runtime", "snapshotter", "id", "createdat", "labelz"])
def test_update_refuses_unknown_or_immutable_paths(store: ContainerStore, path: str) -> None:
    store.create("ns", box("c"))
    with pytest.raises(errdefs.InvalidArgument, match=f'cannot update "{path}" field on "c"'):
        store.update("ns", box("c"), [path])


def test_full_replace_checks_immutable_fields(store: ContainerStore) -> None:
    store.create("ns", box("c", snapshotter="native", snapshot_key="k", labels={"a": "1"}))
    with pytest.raises(errdefs.InvalidArgument, match=r"container\.Snapshotter field is immutable"):
        store.update("ns", box("c", snapshotter="overlayfs"))
    with pytest.raises(
        errdefs.InvalidArgument, match=r"container\.Runtime\.Name field is immutable"
    ):
        store.update("ns", box("c", runtime=Runtime("other"), snapshotter="native"))
    out = store.update("ns", box("c", snapshotter="native", image="new", labels={"b": "2"}))
    # Everything mutable was replaced, including a snapshot key the request left empty.
    assert (out.image, out.labels, out.snapshot_key) == ("new", {"b": "2"}, "")


def test_update_validates_the_result(store: ContainerStore) -> None:
    store.create("ns", box("c"))
    with pytest.raises(errdefs.InvalidArgument, match=r"update failed validation: .*Snapshotter"):
        store.update("ns", box("c", snapshot_key="k"), ["snapshotkey"])
    with pytest.raises(errdefs.InvalidArgument, match=r"update failed validation: .*Spec"):
        store.update("ns", box("c", spec=None), ["spec"])
    with pytest.raises(errdefs.InvalidArgument, match="must specify a container id"):
        store.update("ns", box(""), ["labels"])
    with pytest.raises(errdefs.NotFound, match='container "nope": not found'):
        store.update("ns", box("nope"), ["labels"])
    assert store.get("ns", "c").snapshot_key == ""


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ([], ["a", "b", "c"]),
        (["id==b"], ["b"]),
        (["image==img:1"], ["a"]),
        (["image"], ["a", "b"]),
        (["runtime.name==other"], ["c"]),
        (["labels.team==web"], ["a", "c"]),
        (['labels."x.y"'], ["b"]),
        (["labels.team==web,image==img:1"], ["a"]),
        (["id==a", "id==c"], ["a", "c"]),
        # containerd's adaptor knows no snapshotter field: it never matches.
        (["snapshotter==native"], []),
        (["runtime==other"], []),
    ],
)
def test_filters_follow_containerds_adaptor(
    store: ContainerStore, flt: list[str], expected: list[str]
) -> None:
    store.create("ns", box("a", image="img:1", labels={"team": "web"}))
    store.create("ns", box("b", image="img:2", labels={"x.y": "1"}, snapshotter="native"))
    store.create("ns", box("c", runtime=Runtime("other"), labels={"team": "web"}))
    assert [c.id for c in store.list("ns", flt)] == expected


def test_bad_filter_is_invalid_argument(store: ContainerStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.list("ns", ["id=="])


def test_namespace_with_a_container_cannot_be_deleted(db: DB, store: ContainerStore) -> None:
    store.create("busy", box("c"))
    namespaces = NamespaceStore(db)
    with pytest.raises(errdefs.FailedPrecondition, match="containers"):
        namespaces.delete("busy")
    store.delete("busy", "c")
    namespaces.delete("busy")


@pytest.fixture
def gc_env(tmp_path: Path) -> Iterator[tuple[ContainerStore, MetadataSnapshotter, Collector]]:
    db = DB(tmp_path / "meta.db")
    collector = Collector(db)
    backend = NativeSnapshotter(tmp_path / "native")
    ms = MetadataSnapshotter(db, "native", backend, collector=collector)
    collector.register(LeaseKind())
    collector.register(SnapshotKind({"native": ms}))
    collector.register(ContainerKind())
    yield ContainerStore(db, collector=collector), ms, collector
    backend.close()
    db.close()


def _keys(ms: MetadataSnapshotter, ns: str) -> set[str]:
    return {i.name for i in ms.namespaced(ns).walk()}


def test_container_keeps_its_snapshot_and_parents_alive(
    gc_env: tuple[ContainerStore, MetadataSnapshotter, Collector],
) -> None:
    store, ms, collector = gc_env
    sn = ms.namespaced("ns")
    sn.prepare("layer-w")
    sn.commit("layer", "layer-w")
    sn.prepare("rootfs", "layer")
    sn.prepare("loose")
    store.create("ns", box("c", snapshotter="native", snapshot_key="rootfs"))
    collector.collect()
    # The container's snapshot and its committed parent survive; the rest goes.
    assert _keys(ms, "ns") == {"rootfs", "layer"}
    store.delete("ns", "c")
    collector.collect()
    assert _keys(ms, "ns") == set()


def test_container_edges_are_namespaced_and_follow_updates(
    gc_env: tuple[ContainerStore, MetadataSnapshotter, Collector],
) -> None:
    store, ms, collector = gc_env
    ms.namespaced("a").prepare("k1")
    ms.namespaced("a").prepare("k2")
    ms.namespaced("b").prepare("k1")
    store.create("a", box("c", snapshotter="native", snapshot_key="k1"))
    collector.collect()
    assert _keys(ms, "a") == {"k1"}
    assert _keys(ms, "b") == set()  # same key, other namespace: not held
    ms.namespaced("a").prepare("k2")
    store.update("a", box("c", snapshot_key="k2"), ["snapshotkey"])
    collector.collect()
    assert _keys(ms, "a") == {"k2"}


def test_container_gc_ref_labels_hold_snapshots(
    gc_env: tuple[ContainerStore, MetadataSnapshotter, Collector],
) -> None:
    store, ms, collector = gc_env
    ms.namespaced("ns").prepare("extra")
    # A snapshotter but no key: containerd emits a dead edge; nothing is held by it.
    store.create(
        "ns",
        box("c", snapshotter="native", labels={"containerd.io/gc.ref.snapshot.native": "extra"}),
    )
    collector.collect()
    assert _keys(ms, "ns") == {"extra"}
    store.update("ns", box("c", labels={}), ["labels"])
    collector.collect()
    assert _keys(ms, "ns") == set()


def test_store_reports_mutations_to_the_collector(db: DB) -> None:
    seen: list[bool] = []
    collector = Collector(db)
    collector.register_mutation_callback(seen.append)
    store = ContainerStore(db, collector=collector)
    store.create("ns", box("c", snapshotter="native", snapshot_key="k"))
    store.update("ns", box("c", labels={"a": "b"}), ["labels"])
    store.update("ns", box("c", snapshot_key="k2"), ["snapshotkey"])
    store.delete("ns", "c")
    # Only changes that can drop a reference make a collection due.
    assert seen == [False, False, True, True]


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, object]] = []

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        self.seen.append((namespace, topic, event))


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("containerd-namespace", "evns"),)


def test_service_publishes_containerds_events(db: DB) -> None:
    import asyncio

    from google.protobuf import any_pb2, field_mask_pb2

    from berth.api.events import container_pb2 as ev
    from berth.api.services.containers.v1 import containers_pb2 as pb
    from berth.core import events
    from berth.services.containers import ContainersService

    svc = ContainersService(ContainerStore(db))
    rec = _Recorder()
    opts = any_pb2.Any(type_url="t/opts", value=b"\x01")
    container = pb.Container(
        id="c",
        image="img",
        runtime=pb.Container.Runtime(name=RUNC, options=opts),
        spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=b"{}"),
    )

    async def scenario() -> None:
        ctx = _Context()
        await svc.Create(pb.CreateContainerRequest(container=container), ctx)
        await svc.Update(
            pb.UpdateContainerRequest(
                container=pb.Container(id="c", labels={"a": "b"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            ctx,
        )
        streamed = [m async for m in svc.ListStream(pb.ListContainersRequest(), ctx)]
        assert [m.container.runtime.options for m in streamed] == [opts]
        await svc.Delete(pb.DeleteContainerRequest(id="c"), ctx)

    events.set_publisher(rec)
    try:
        asyncio.run(scenario())
    finally:
        events.set_publisher(None)
    assert [(ns, topic) for ns, topic, _ in rec.seen] == [
        ("evns", "/containers/create"),
        ("evns", "/containers/update"),
        ("evns", "/containers/delete"),
    ]
    create, update, delete = (e for _, _, e in rec.seen)
    assert create == ev.ContainerCreate(
        id="c", image="img", runtime=ev.ContainerCreate.Runtime(name=RUNC, options=opts)
    )
    assert update == ev.ContainerUpdate(id="c", image="img", labels={"a": "b"})
    assert delete == ev.ContainerDelete(id="c")
