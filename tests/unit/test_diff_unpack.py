"""The unpacker: layers into committed snapshots keyed by chain ID, labels, cleanup."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.content import Descriptor, Digest, LocalStore, MemoryLabelStore
from berth.core.diff.walking import WalkingDiffer
from berth.core.images import mediatypes as mt
from berth.core.images.rootfs import chain_ids
from berth.core.metadata.db import DB
from berth.core.snapshots import Kind
from berth.core.snapshots.metadata import MetadataSnapshotter
from berth.core.snapshots.native import NativeSnapshotter
from berth.core.unpack import Unpacker


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Unpacker, LocalStore]]:
    db = DB(tmp_path / "meta.db")
    backend = NativeSnapshotter(tmp_path / "native")
    ms = MetadataSnapshotter(db, "native", backend)
    store = LocalStore(tmp_path / "content", MemoryLabelStore())
    yield (
        Unpacker(
            snapshotter=ms.namespaced("default"),
            snapshotter_name="native",
            differ=WalkingDiffer(store),
            content=store,
        ),
        store,
    )
    backend.close()
    db.close()


def put(store: LocalStore, data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    digest = Digest.from_bytes(data)
    with store.open_writer(f"t-{digest.hex}", total=len(data)) as w:
        w.write(data)
        w.commit(len(data), digest)
    return Descriptor(media_type, digest, len(data))


def layer(store: LocalStore, files: dict[str, bytes]) -> tuple[Descriptor, Digest]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tar = buf.getvalue()
    return put(store, gzip.compress(tar, mtime=0)), Digest.from_bytes(tar)


def test_unpack_commits_chain_ids_labels_and_reuses(env: tuple[Unpacker, LocalStore]) -> None:
    u, store = env
    (l1, d1), (l2, d2) = layer(store, {"a": b"1"}), layer(store, {"b": b"2"})
    config = put(store, b"{}", mt.OCI_CONFIG)
    result = u.unpack_layers([l1, l2], [d1, d2], config)
    chains = chain_ids([d1, d2])
    assert result.chain_id == chains[-1] and result.applied == tuple(chains)
    infos = {i.name: i for i in u.sn.walk()}
    assert set(infos) == {str(c) for c in chains}
    assert all(i.kind is Kind.COMMITTED for i in infos.values())
    assert infos[str(chains[1])].parent == str(chains[0])
    assert store.info(l1.digest).labels["containerd.io/uncompressed"] == str(d1)
    assert store.info(config.digest).labels == {
        "containerd.io/gc.ref.snapshot.native": str(chains[-1])
    }
    again = u.unpack_layers([l1, l2], [d1, d2], config)
    assert again.applied == ()


def test_wrong_diff_id_or_hostile_layer_leaves_no_active_snapshot(
    env: tuple[Unpacker, LocalStore],
) -> None:
    u, store = env
    l1, d1 = layer(store, {"a": b"1"})
    _, other = layer(store, {"x": b"different"})
    config = put(store, b"{}", mt.OCI_CONFIG)
    with pytest.raises(errdefs.InvalidArgument, match="wrong diff id"):
        u.unpack_layers([l1], [other], config)
    assert u.sn.walk() == []
    evil, evil_id = layer(store, {"../escape": b"x"})
    with pytest.raises(errdefs.InvalidArgument, match="escapes the root"):
        u.unpack_layers([l1, evil], [d1, evil_id], config)
    assert [(i.name, i.kind) for i in u.sn.walk()] == [(str(d1), Kind.COMMITTED)]


def test_layer_and_diff_id_counts_must_match(env: tuple[Unpacker, LocalStore]) -> None:
    u, store = env
    l1, _ = layer(store, {"a": b"1"})
    with pytest.raises(errdefs.InvalidArgument, match="don't match"):
        u.unpack_layers([l1], [], put(store, b"{}", mt.OCI_CONFIG))
