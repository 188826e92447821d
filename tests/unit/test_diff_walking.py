"""The walking differ over a content store: apply (codecs, digests, errors) and
compare (a changed tree round-trips through a layer byte for byte)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from berth import errdefs
from berth.core.content import Descriptor, Digest, LocalStore, MemoryLabelStore
from berth.core.diff import UNCOMPRESSED_LABEL
from berth.core.diff.changes import iter_changes
from berth.core.diff.walking import WalkingDiffer
from berth.core.images import mediatypes as mt
from berth.core.mount import Mount

OCI_GZIP = mt.OCI_LAYER_GZIP


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "content", MemoryLabelStore())


def put(store: LocalStore, data: bytes, media_type: str = OCI_GZIP) -> Descriptor:
    digest = Digest.from_bytes(data)
    with store.open_writer(f"test-{digest.hex}", total=len(data)) as w:
        w.write(data)
        w.commit(len(data), digest)
    return Descriptor(media_type, digest, len(data))


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bind(path: Path, *, ro: bool = False) -> list[Mount]:
    return [Mount("bind", str(path), ["rbind", "ro" if ro else "rw"])]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("media_type", "encode"),
    [
        (mt.OCI_LAYER_GZIP, lambda b: gzip.compress(b, mtime=0)),
        (mt.OCI_LAYER_ZSTD, lambda b: zstandard.ZstdCompressor().compress(b)),
        (mt.OCI_LAYER, lambda b: b),
        # Docker's "diff.tar" holding gzip data: sniffed, as containerd does.
        (mt.DOCKER_LAYER, lambda b: gzip.compress(b, mtime=0)),
    ],
)
def test_apply_returns_the_diff_id_of_the_uncompressed_tar(
    store: LocalStore, tmp_path: Path, media_type: str, encode: object
) -> None:
    raw = tar_of({"etc/hello": b"world"}) + b"\0" * 4096  # trailing bytes count too
    desc = put(store, encode(raw), media_type)  # type: ignore[operator]
    target = tmp_path / "target"
    target.mkdir()
    applied = WalkingDiffer(store).apply(desc, bind(target))
    assert applied.media_type == mt.OCI_LAYER
    assert str(applied.digest) == sha(raw)
    assert applied.size == len(raw)
    assert (target / "etc/hello").read_bytes() == b"world"


def test_apply_without_mounts_only_computes_the_diff_id(store: LocalStore) -> None:
    raw = tar_of({"x": b"y"})
    applied = WalkingDiffer(store).apply(put(store, gzip.compress(raw)), [])
    assert str(applied.digest) == sha(raw)


def test_apply_through_a_temporary_mount(store: LocalStore, tmp_path: Path) -> None:
    # A read-only-looking option list forces the mount path: "bind" with "ro"
    # is mounted, and writing to it fails cleanly.
    target = tmp_path / "t"
    target.mkdir()
    desc = put(store, gzip.compress(tar_of({"f": b"1"})))
    with pytest.raises(errdefs.BerthError, match="'f'"):
        WalkingDiffer(store).apply(desc, bind(target, ro=True))
    assert os.listdir(target) == []


def test_broken_gzip_is_invalid_argument(store: LocalStore, tmp_path: Path) -> None:
    data = gzip.compress(tar_of({"a": b"x" * 100_000, "b": b"y"}))
    broken = data[: len(data) // 2] + bytes(b ^ 0x55 for b in data[len(data) // 2 :])
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="corrupt or truncated compressed data"):
        WalkingDiffer(store).apply(put(store, broken), bind(target))
    truncated = data[: len(data) - 20]
    with pytest.raises(errdefs.InvalidArgument, match="corrupt or truncated"):
        WalkingDiffer(store).apply(put(store, truncated), bind(target))


def test_unknown_media_type_and_missing_blob(store: LocalStore, tmp_path: Path) -> None:
    desc = put(store, tar_of({"a": b""}), "application/octet-stream")
    with pytest.raises(errdefs.BerthError, match="no processor for media-type") as info:
        WalkingDiffer(store).apply(desc, [])
    assert errdefs.code_of(info.value) == errdefs.CODE_UNKNOWN
    missing = Descriptor(OCI_GZIP, Digest.from_bytes(b"absent"), 6)
    with pytest.raises(errdefs.NotFound):
        WalkingDiffer(store).apply(missing, [])


def test_compare_rejects_unsupported_media_types(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(errdefs.NotImplemented, match="unsupported diff media type"):
        WalkingDiffer(store).compare([], bind(tmp_path, ro=True), media_type="text/plain")


# -- compare, then apply: the round trip -----------------------------------------


def _lower(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/keep").write_text("keep")
    (root / "etc/change").write_text("old")
    (root / "etc/remove").write_text("bye")
    (root / "gone/deep").mkdir(parents=True)
    (root / "gone/deep/f").write_text("x")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"\x7fELF")
    os.utime(root / "etc/change", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


def _change(root: Path) -> None:
    (root / "etc/change").write_text("new!")
    (root / "etc/remove").unlink()
    shutil.rmtree(root / "gone")
    os.chmod(root / "bin/tool", 0o4755)
    os.chown(root / "bin/tool", 1000, 1000)
    os.chmod(root / "bin/tool", 0o4755)  # chown cleared setuid
    os.setxattr(root / "bin/tool", "security.capability", b"\x01\x00\x00\x02" + bytes(16))
    (root / "new/sub").mkdir(parents=True)
    (root / "new/sub/file").write_bytes(os.urandom(3000))
    os.link(root / "new/sub/file", root / "new/link")
    os.symlink("../etc/keep", root / "new/sym")
    os.setxattr(root / "new/sub/file", "user.tag", b"\xff\x00binary")
    os.utime(root / "new/sub/file", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))


def snapshot_of(root: Path, *, dir_times: bool = False) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            xattrs = {
                k: os.getxattr(p, k, follow_symlinks=False)
                for k in os.listxattr(p, follow_symlinks=False)
            }
            if stat.S_ISREG(st.st_mode):
                body: object = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = None
            mtime = st.st_mtime_ns if dir_times or not stat.S_ISDIR(st.st_mode) else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, body, xattrs, mtime, st.st_nlink)
    return out


@pytest.mark.parametrize("media_type", [mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER])
def test_diff_then_apply_round_trips_a_changed_tree(
    store: LocalStore, tmp_path: Path, media_type: str
) -> None:
    lower, upper, replay = tmp_path / "lower", tmp_path / "upper", tmp_path / "replay"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True)
    shutil.copytree(lower, replay, symlinks=True)
    _change(upper)

    differ = WalkingDiffer(store)
    desc = differ.compare(
        bind(lower, ro=True), bind(upper, ro=True), media_type=media_type, labels={"a": "b"}
    )
    assert desc.media_type == media_type
    info = store.info(desc.digest)
    assert info.labels["a"] == "b"
    if media_type != mt.OCI_LAYER:
        assert UNCOMPRESSED_LABEL in info.labels

    applied = differ.apply(desc, bind(replay))
    if media_type == mt.OCI_LAYER:
        assert applied.digest == desc.digest
    else:
        assert str(applied.digest) == info.labels[UNCOMPRESSED_LABEL]
    assert snapshot_of(replay) == snapshot_of(upper)


def test_compare_emits_whiteouts_and_parents_only_for_changes(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True)
    _change(upper)
    names = list(iter_changes(str(lower), str(upper)))
    assert "etc/.wh.remove" in names and ".wh.gone" in names
    assert "etc/keep" not in names
    assert names.index("new") < names.index("new/sub") < names.index("new/sub/file")
    assert "etc/change" in names and "bin/tool" in names


def test_same_diff_twice_is_one_blob(store: LocalStore, tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True)
    _change(upper)
    differ = WalkingDiffer(store)
    a = differ.compare(bind(lower, ro=True), bind(upper, ro=True))
    b = differ.compare(bind(lower, ro=True), bind(upper, ro=True), ref="fixed-ref")
    assert a == b
    assert store.list_statuses() == []
