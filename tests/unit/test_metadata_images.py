"""Image records: validation, filters, field-mask updates, namespacing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.metadata.images import Image, ImageStore, make_target
from berth.core.metadata.namespaces import NamespaceStore
from berth.core.metadata.plugin import Metadata

MT = "application/vnd.oci.image.manifest.v1+json"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    md = Metadata(tmp_path / "meta.db", None)
    yield md.images
    md.close()


def img(name: str, digest: str = D1, **labels: str) -> Image:
    return Image(name, make_target(MT, digest, 10, {"note": "x"}), dict(labels))


def test_create_get_and_duplicate(store: ImageStore) -> None:
    created = store.create("ns", img("a:1", team="x"))
    assert created.created_at == created.updated_at
    got = store.get("ns", "a:1")
    assert got.target.digest == created.target.digest
    assert got.target.annotations == {"note": "x"}
    assert got.labels == {"team": "x"}
    with pytest.raises(errdefs.AlreadyExists, match='image "a:1": already exists'):
        store.create("ns", img("a:1"))
    with pytest.raises(errdefs.NotFound, match='image "a:1": not found'):
        store.get("other", "a:1")


@pytest.mark.parametrize(
    ("media_type", "digest", "size", "message"),
    [
        (MT, "sha256:zz", 1, "Target.Digest"),
        (MT, "md5:" + "0" * 32, 1, "unsupported digest algorithm"),
        (MT, D1, 0, "Target.Size must be greater than zero"),
        ("", D1, 1, "Target.MediaType must be set"),
    ],
)
def test_target_validation(media_type: str, digest: str, size: int, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        make_target(media_type, digest, size)


def test_create_rejects_empty_name_and_bad_labels(store: ImageStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="image name must not be empty"):
        store.create("ns", img(""))
    with pytest.raises(errdefs.InvalidArgument, match=r"image\.Labels"):
        store.create("ns", Image("b", make_target(MT, D1, 1), {"": "v"}))


def test_list_filters(store: ImageStore) -> None:
    store.create("ns", img("a:1", team="x"))
    store.create("ns", img("b:1", D2))
    assert [i.name for i in store.list("ns")] == ["a:1", "b:1"]
    assert [i.name for i in store.list("ns", ["name==b:1"])] == ["b:1"]
    assert [i.name for i in store.list("ns", [f"target.digest=={D2}"])] == ["b:1"]
    assert [i.name for i in store.list("ns", ["labels.team==x"])] == ["a:1"]
    assert [i.name for i in store.list("ns", ["annotations.note==x"])] == ["a:1", "b:1"]
    assert [i.name for i in store.list("ns", ['target.mediatype~="manifest"'])] == ["a:1", "b:1"]
    assert [i.name for i in store.list("ns", ["name==a:1", "name==b:1"])] == ["a:1", "b:1"]
    with pytest.raises(errdefs.InvalidArgument):
        store.list("ns", ["name=="])


def test_update_with_and_without_mask(store: ImageStore) -> None:
    created = store.create("ns", img("a:1", keep="1", drop="2"))
    up = store.update(
        "ns", "a:1", labels={"drop": "", "new": "3"}, fieldpaths=["labels.drop", "labels.new"]
    )
    assert up.labels == {"keep": "1", "new": "3"}
    assert up.created_at == created.created_at
    assert up.target.digest == created.target.digest
    up = store.update("ns", "a:1", annotations={"other": "y"}, fieldpaths=["annotations"])
    assert up.target.annotations == {"other": "y"}
    up = store.update("ns", "a:1", target=make_target(MT, D2, 20), fieldpaths=["target"])
    assert (str(up.target.digest), up.target.size) == (D2, 20)
    # No mask: labels and target are replaced as a whole.
    up = store.update("ns", "a:1", labels={"only": "this"}, target=make_target(MT, D1, 5))
    assert up.labels == {"only": "this"}
    assert store.get("ns", "a:1").target.size == 5
    with pytest.raises(errdefs.InvalidArgument, match='cannot update "name"'):
        store.update("ns", "a:1", fieldpaths=["name"])
    with pytest.raises(errdefs.InvalidArgument, match="required"):
        store.update("ns", "", labels={})
    with pytest.raises(errdefs.NotFound):
        store.update("ns", "missing", labels={}, fieldpaths=["labels"])


def test_delete_and_namespace_emptiness(store: ImageStore) -> None:
    store.create("busy", img("a:1"))
    with pytest.raises(errdefs.FailedPrecondition, match="images"):
        NamespaceStore(store.db).delete("busy")
    store.delete("busy", "a:1")
    with pytest.raises(errdefs.NotFound):
        store.delete("busy", "a:1")
    NamespaceStore(store.db).delete("busy")


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        self.events.append((namespace, topic, event))


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("containerd-namespace", "evns"),)


def test_images_service_publishes_containerd_events(tmp_path: Path) -> None:
    import asyncio

    from berth.api.events import image_pb2
    from berth.api.services.images.v1 import images_pb2 as pb
    from berth.api.types import descriptor_pb2
    from berth.core import events
    from berth.services.images import ImagesService

    md = Metadata(tmp_path / "meta.db", None)
    rec = _Recorder()
    events.set_publisher(rec)
    try:
        svc = ImagesService(md, None)
        target = descriptor_pb2.Descriptor(media_type=MT, digest=D1, size=3)
        ctx = _Context()

        async def main() -> None:
            await svc.Create(
                pb.CreateImageRequest(image=pb.Image(name="e:1", target=target, labels={"a": "b"})),
                ctx,
            )
            await svc.Update(
                pb.UpdateImageRequest(
                    image=pb.Image(name="e:1", labels={"a": "c"}),
                    update_mask={"paths": ["labels.a"]},
                ),
                ctx,
            )
            await svc.Delete(pb.DeleteImageRequest(name="e:1", sync=True), ctx)

        asyncio.run(main())
    finally:
        events.set_publisher(None)
        md.close()
    assert [(ns, topic) for ns, topic, _ in rec.events] == [
        ("evns", "/images/create"),
        ("evns", "/images/update"),
        ("evns", "/images/delete"),
    ]
    assert rec.events[0][2] == image_pb2.ImageCreate(name="e:1", labels={"a": "b"})
    assert rec.events[1][2] == image_pb2.ImageUpdate(name="e:1", labels={"a": "c"})
    assert rec.events[2][2] == image_pb2.ImageDelete(name="e:1")
    assert isinstance(events.publisher(), events.NullPublisher)
