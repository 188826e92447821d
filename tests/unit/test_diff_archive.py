"""The layer extractor: OCI changeset rules, metadata, hostile layers, big and sparse files."""

from __future__ import annotations

import io
import os
import resource
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.diff.archive import (
    OVERLAY_OPAQUE_XATTR,
    ApplyOptions,
    Whiteouts,
    apply_tar,
    clean_name,
    pax_time_ns,
    whiteout_target,
)

Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_600_000_000
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def node(name: str, kind: bytes, **kw: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o777
    info.mtime = 1_600_000_000
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def layer(*members: Member) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


@pytest.fixture(params=[0, 4], ids=["serial", "workers"])
def opts(request: pytest.FixtureRequest) -> ApplyOptions:
    return ApplyOptions(workers=request.param)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(root, outside): ``outside`` is a sibling that no apply may touch."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    yield root, outside
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious"


# -- pure helpers --------------------------------------------------------------


def test_clean_name_strips_root_and_dots_and_rejects_escapes() -> None:
    assert clean_name("/etc/./passwd") == ["etc", "passwd"]
    assert clean_name("a/b/../c/") == ["a", "c"]
    assert clean_name("./") == []
    for bad in ("../x", "a/../../x", "/.."):
        with pytest.raises(errdefs.InvalidArgument, match="escapes the root"):
            clean_name(bad)


def test_whiteout_of_dot_dot_is_rejected() -> None:
    assert whiteout_target(".wh.file", "d/.wh.file") == "file"
    for bad in (".wh.", ".wh..", ".wh..."):
        with pytest.raises(errdefs.InvalidArgument, match="invalid whiteout"):
            whiteout_target(bad, bad)


def test_pax_times_keep_nanoseconds() -> None:
    assert pax_time_ns("1700000000.123456789", 0) == 1_700_000_000_123_456_789
    assert pax_time_ns("1700000000.5", 0) == 1_700_000_000_500_000_000
    assert pax_time_ns(None, 12.0) == 12_000_000_000
    assert pax_time_ns("garbage", 3.0) == 3_000_000_000


# -- changeset rules and metadata ------------------------------------------------


def test_files_dirs_links_and_metadata_are_restored(tmp_path: Path, opts: ApplyOptions) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)  # cap_net_bind_service, v2
    f, data = reg("bin/ping", b"ELF", mode=0o4755, uid=1000, gid=2000)
    f.pax_headers = {
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "hi",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "mtime": "1600000000.123456789",
    }
    # A hard link's header applies to the shared inode (as in containerd),
    # so it carries the same metadata, as real tars do.
    link = node("bin/ping2", tarfile.LNKTYPE, linkname="bin/ping", mode=0o4755, uid=1000, gid=2000)
    link[0].pax_headers = dict(f.pax_headers)
    stats = apply_tar(
        layer(
            node("bin", tarfile.DIRTYPE, mode=0o711, mtime=1_500_000_000),
            (f, data),
            node("bin/sh", tarfile.SYMTYPE, linkname="ping", uid=7),
            link,
            node("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            node("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        ),
        tmp_path,
        opts,
    )
    assert stats.entries == 6
    ping = tmp_path / "bin/ping"
    st = ping.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1000, 2000)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.getxattr(ping, "security.capability") == cap
    assert os.getxattr(ping, "user.note") == b"hi"
    assert "trusted.overlay.redirect" not in os.listxattr(ping)
    assert (tmp_path / "bin/ping2").lstat().st_ino == st.st_ino
    assert os.readlink(tmp_path / "bin/sh") == "ping"
    assert (tmp_path / "bin/sh").lstat().st_uid == 7
    dev = (tmp_path / "dev/null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO((tmp_path / "run/fifo").lstat().st_mode)
    # Directory times are set after the children were created.
    b = (tmp_path / "bin").lstat()
    assert b.st_mtime == 1_500_000_000 and stat.S_IMODE(b.st_mode) == 0o711
    assert stat.S_IMODE((tmp_path / "dev").lstat().st_mode) == 0o755  # implicit parent


def test_whiteouts_and_opaque_dirs_delete_in_plain_mode(tmp_path: Path, opts: ApplyOptions) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep/old").write_text("x")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone/deep").write_text("x")
    (tmp_path / "opq/sub").mkdir(parents=True)
    (tmp_path / "opq/sub/lower").write_text("x")
    (tmp_path / "opq/lower").write_text("x")
    apply_tar(
        layer(
            reg(".wh.gone"),
            reg("keep/.wh.old"),
            node("opq", tarfile.DIRTYPE),
            node("opq/sub", tarfile.DIRTYPE),
            reg("opq/sub/new", b"new"),
            reg("opq/.wh..wh..opq"),
            reg("opq/after", b"after"),
        ),
        tmp_path,
        opts,
    )
    assert not (tmp_path / "gone").exists()
    assert os.listdir(tmp_path / "keep") == []
    assert sorted(os.listdir(tmp_path / "opq")) == ["after", "sub"]
    assert os.listdir(tmp_path / "opq/sub") == ["new"]


def test_entries_replace_and_directories_merge(tmp_path: Path, opts: ApplyOptions) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/lower").write_text("x")
    (tmp_path / "f").mkdir()
    (tmp_path / "f/child").write_text("x")
    (tmp_path / "s").write_text("was a file")
    apply_tar(
        layer(
            node("d", tarfile.DIRTYPE, mode=0o700),
            reg("f", b"now a file"),
            node("s", tarfile.SYMTYPE, linkname="f"),
            reg("dup", b"first"),
            reg("dup", b"second"),
        ),
        tmp_path,
        opts,
    )
    assert os.listdir(tmp_path / "d") == ["lower"]
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert (tmp_path / "f").read_bytes() == b"now a file"
    assert os.readlink(tmp_path / "s") == "f"
    assert (tmp_path / "dup").read_bytes() == b"second"


def test_overlay_mode_writes_whiteouts_and_copies_up_parents(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "tmp").mkdir(parents=True)
    os.chmod(lower / "tmp", 0o1777)
    os.chown(lower / "tmp", 0, 5)
    (lower / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", lower / "lib")
    (lower / "etc").mkdir()
    (lower / "etc/passwd").write_text("root")
    (lower / "etc/old").write_text("x")
    upper.mkdir()
    apply_tar(
        layer(
            reg("tmp/new", b"t"),  # no entry for tmp itself
            reg("lib/libx.so", b"x"),  # through the lower symlink
            reg("etc/.wh.old"),
            node("etc/opq", tarfile.DIRTYPE),
            reg("etc/opq/.wh..wh..opq"),
            node("etc/plink", tarfile.LNKTYPE, linkname="etc/passwd"),
        ),
        upper,
        ApplyOptions(whiteouts=Whiteouts.OVERLAY, lowers=(str(lower),)),
    )
    t = (upper / "tmp").lstat()
    assert (stat.S_IMODE(t.st_mode), t.st_gid) == (0o1777, 5)
    assert (upper / "usr/lib/libx.so").read_bytes() == b"x"
    assert not (upper / "lib").exists()
    wh = (upper / "etc/old").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(upper / "etc/opq", OVERLAY_OPAQUE_XATTR) == b"y"
    # A hard link to a lower file copies it up first.
    assert (upper / "etc/plink").read_text() == "root"
    assert (upper / "etc/plink").stat().st_ino == (upper / "etc/passwd").stat().st_ino


# -- hostile layers --------------------------------------------------------------


@pytest.mark.parametrize(
    "members",
    [
        [reg("../outside/victim", b"pwned")],
        [reg("a/../../outside/pwned", b"pwned")],
        [node("x", tarfile.LNKTYPE, linkname="../outside/victim")],
        [reg("d/.wh..", b"")],
        [reg(".wh...", b"")],
    ],
    ids=["dotdot", "nested-dotdot", "hardlink-dotdot", "whiteout-dotdot", "whiteout-dotdotdot"],
)
def test_hostile_entries_are_invalid_argument_naming_the_entry(
    sandbox: tuple[Path, Path], members: list[Member], opts: ApplyOptions
) -> None:
    root, _ = sandbox
    with pytest.raises(errdefs.InvalidArgument) as info:
        apply_tar(layer(*members), root, opts)
    assert repr(members[0][0].name) in str(info.value)


def test_symlinked_parents_resolve_inside_the_root(
    sandbox: tuple[Path, Path], opts: ApplyOptions
) -> None:
    root, outside = sandbox
    apply_tar(
        layer(
            node("abs", tarfile.SYMTYPE, linkname=str(outside)),
            reg("abs/victim", b"pwned"),
            node("up", tarfile.SYMTYPE, linkname="../../../.."),
            reg("up/escaped", b"pwned"),
            node("loop", tarfile.SYMTYPE, linkname="abs/../up/abs"),
            reg("loop/deeper", b"x"),
            node("hl", tarfile.LNKTYPE, linkname="abs/victim"),
        ),
        root,
        opts,
    )
    inside = root / str(outside).lstrip("/")
    assert (inside / "victim").read_bytes() == b"pwned"
    assert (root / "escaped").read_bytes() == b"pwned"
    assert [p for p in root.rglob("deeper") if p.is_file()]  # somewhere inside the root
    assert (root / "hl").read_bytes() == b"pwned"


def test_symlink_loops_are_invalid_argument(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    with pytest.raises(errdefs.InvalidArgument, match="symbolic links"):
        apply_tar(
            layer(
                node("a", tarfile.SYMTYPE, linkname="b"),
                node("b", tarfile.SYMTYPE, linkname="a"),
                reg("a/x", b""),
            ),
            root,
        )


def test_hardlink_to_missing_or_directory_target_is_rejected(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    with pytest.raises(errdefs.InvalidArgument, match="not found"):
        apply_tar(layer(node("x", tarfile.LNKTYPE, linkname=str(outside / "victim"))), root)
    with pytest.raises(errdefs.InvalidArgument, match="directory"):
        apply_tar(layer(node("d", tarfile.DIRTYPE), node("y", tarfile.LNKTYPE, linkname="d")), root)


def test_device_nodes_can_be_refused(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    with pytest.raises(errdefs.InvalidArgument, match="device nodes are not allowed"):
        apply_tar(
            layer(node("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)),
            root,
            ApplyOptions(allow_devices=False),
        )
    assert not (root / "dev/sda").exists()


def test_truncated_tar_is_invalid_argument(tmp_path: Path, opts: ApplyOptions) -> None:
    data = layer(reg("big", b"x" * 100_000)).getvalue()[:50_000]
    with pytest.raises(errdefs.InvalidArgument, match="'big'"):
        apply_tar(io.BytesIO(data), tmp_path, opts)


# -- scale -------------------------------------------------------------------


def test_sparse_file_keeps_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(8 << 30)
        f.write(b"tail")
    tar = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=posix", "-cf", str(tar), "-C", str(src), "sparse"],
        check=True,
    )
    assert tar.stat().st_size < 1 << 20
    root = tmp_path / "root"
    root.mkdir()
    with open(tar, "rb") as f:
        apply_tar(f, root)
    st = (root / "sparse").stat()
    assert st.st_size == (8 << 30) + 4
    assert st.st_blocks * 512 < 1 << 20
    with open(root / "sparse", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(8 << 30)
        assert f.read() == b"tail"


def test_zero_runs_in_big_plain_files_become_holes(tmp_path: Path) -> None:
    size = 64 << 20
    info = tarfile.TarInfo("zeros")
    info.size = size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"\0" * size))
    buf.seek(0)
    apply_tar(buf, tmp_path)
    st = (tmp_path / "zeros").stat()
    assert st.st_size == size and st.st_blocks * 512 < 1 << 20


def _many_files(n: int) -> Iterator[bytes]:
    """A tar of ``n`` tiny files in 100 directories, generated in pieces."""
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT)
    for i in range(n):
        if i % 1000 == 0:
            tf.addfile(node(f"d{i // 1000}", tarfile.DIRTYPE)[0])
        info, data = reg(f"d{i // 1000}/f{i}", b"%d" % i)
        tf.addfile(info, io.BytesIO(data or b""))
        if buf.tell() > 1 << 20:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    tf.close()
    yield buf.getvalue()


class _Chunks(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def test_100k_tiny_files_in_bounded_memory(tmp_path: Path) -> None:
    n = 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    stats = apply_tar(io.BufferedReader(_Chunks(_many_files(n))), tmp_path)
    elapsed = time.monotonic() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert stats.entries == n + 100
    assert (tmp_path / "d99/f99999").read_bytes() == b"99999"
    assert sum(len(os.listdir(tmp_path / f"d{i}")) for i in range(100)) == n
    assert grown_kib < 200 * 1024, f"peak RSS grew by {grown_kib} KiB"
    assert elapsed < 240, f"took {elapsed:.1f}s"
