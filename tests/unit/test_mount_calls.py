"""The syscalls ``berth.core.mount`` makes, and the shim's rootfs policy on top.

mount(2) and umount2(2) are replaced by recorders, so these run without
privileges; real mounts are exercised by the snapshot and shim integration
tests.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from berth import errdefs
from berth.core import mount as mountmod
from berth.core.mount import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    Mount,
    MountError,
    parse_options,
    split_options,
)
from berth.shim import mount as shim_mount


@dataclass
class Call:
    source: str
    target: str
    fstype: str
    flags: int
    data: str
    cwd: str
    thread: str


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    fail_with: int = 0

    def __call__(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        self.calls.append(
            Call(
                source,
                target,
                fstype,
                flags,
                data,
                os.getcwd(),
                threading.current_thread().name,
            )
        )
        if self.fail_with:
            raise MountError(f"mount {target!r}: {os.strerror(self.fail_with)}", self.fail_with)


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    monkeypatch.setattr(mountmod, "_sys_mount", rec)
    yield rec


def test_split_options_keeps_propagation_apart_and_later_rw_wins() -> None:
    flags, propagation, data = split_options(
        ["ro", "nosuid", "lowerdir=/a:/b", "upperdir=/u", "rprivate", "rw"]
    )
    assert (flags, propagation) == (MS_NOSUID, MS_PRIVATE | MS_REC)
    assert data == "lowerdir=/a:/b,upperdir=/u"
    assert parse_options(["bind", "rslave"]) == (MS_BIND | MS_SLAVE | MS_REC, "")


def test_recursive_propagation_does_not_make_a_bind_recursive(syscalls: Recorder) -> None:
    mountmod.mount(Mount("bind", "/src", ["bind", "rprivate"]), "/dst")
    bind, propagation = syscalls.calls
    assert bind.flags == MS_BIND
    assert (propagation.target, propagation.flags) == ("/dst", MS_PRIVATE | MS_REC)


@pytest.mark.parametrize(
    ("option", "flag"),
    [("ro", MS_RDONLY), ("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)],
)
def test_bind_is_remounted_to_apply_per_mount_flags(
    syscalls: Recorder, option: str, flag: int
) -> None:
    mountmod.mount(Mount("bind", "/src", ["rbind", option]), "/dst")
    bind, remount = syscalls.calls
    assert (bind.source, bind.target, bind.flags & (MS_BIND | MS_REC)) == (
        "/src",
        "/dst",
        MS_BIND | MS_REC,
    )
    assert remount.target == "/dst"
    assert remount.flags == MS_BIND | MS_REC | MS_REMOUNT | flag


def test_plain_bind_needs_no_remount(syscalls: Recorder) -> None:
    mountmod.mount(Mount("bind", "/src", ["rbind", "rw"]), "/dst")
    assert len(syscalls.calls) == 1


def test_propagation_is_a_separate_call(syscalls: Recorder) -> None:
    mountmod.mount(Mount("tmpfs", "tmpfs", ["size=1m", "rprivate"]), "/dst")
    first, second = syscalls.calls
    assert (first.fstype, first.flags, first.data) == ("tmpfs", 0, "size=1m")
    assert second.flags == MS_PRIVATE | MS_REC and second.source == ""


def _deep_overlay(parent: str, layers: int) -> Mount:
    lower = ":".join(f"{parent}/{i}/fs" for i in range(layers, 0, -1))
    return Mount(
        "overlay",
        "overlay",
        [f"workdir={parent}/0/work", f"upperdir={parent}/0/fs", f"lowerdir={lower}"],
    )


def test_long_lowerdir_mounts_relative_on_a_thread_with_its_own_cwd(
    syscalls: Recorder, tmp_path: Path
) -> None:
    parent = str(tmp_path / ("s" * 40))
    os.mkdir(parent)
    m = _deep_overlay(parent, 100)
    assert sum(len(o) + 1 for o in m.options) > mountmod.PAGE_SIZE
    before = os.getcwd()
    mountmod.mount(m, "rel-target")
    (call,) = syscalls.calls
    assert call.thread == "berth-mount-in-dir"
    assert call.cwd == parent
    assert call.target == os.path.join(before, "rel-target")  # not resolved in parent
    lower = next(o for o in call.data.split(",") if o.startswith("lowerdir="))
    assert lower == "lowerdir=" + ":".join(f"{i}/fs" for i in range(100, 0, -1))
    assert f"upperdir={parent}/0/fs" in call.data  # only lowerdirs are rewritten
    assert os.getcwd() == before


def test_short_lowerdir_mounts_directly(syscalls: Recorder) -> None:
    mountmod.mount(_deep_overlay("/r/snapshots", 3), "/dst")
    (call,) = syscalls.calls
    assert call.thread == threading.current_thread().name
    assert "lowerdir=/r/snapshots/3/fs:" in call.data


def test_failure_on_the_mount_thread_reaches_the_caller(syscalls: Recorder, tmp_path: Path) -> None:
    syscalls.fail_with = errno.ENOENT
    with pytest.raises(MountError) as ei:
        mountmod.mount(_deep_overlay(str(tmp_path / ("s" * 40)), 100), "/dst")
    assert ei.value.errno == errno.ENOENT


def test_missing_compaction_dir_is_a_mount_error(tmp_path: Path) -> None:
    with pytest.raises(MountError) as ei:
        mountmod.mount(_deep_overlay(str(tmp_path / ("missing" * 6)), 100), "/dst")
    assert ei.value.errno == errno.ENOENT and "chdir" in str(ei.value)


class FakeUmount:
    """umount2 that reports EBUSY ``busy`` times, then unmounts ``stacked`` mounts."""

    def __init__(self, *, busy: int, stacked: int) -> None:
        self.busy = busy
        self.stacked = stacked
        self.flags: list[int] = []
        self.errno = 0

    def umount2(self, path: bytes, flags: int) -> int:
        self.flags.append(flags)
        if self.stacked == 0:
            self.errno = errno.EINVAL
            return -1
        if flags & MNT_DETACH or self.busy == 0:
            self.stacked -= 1
            return 0
        self.busy -= 1
        self.errno = errno.EBUSY
        return -1


@pytest.fixture
def umount(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeUmount]:
    monkeypatch.setattr(mountmod.time, "sleep", lambda _s: None)

    def install(*, busy: int, stacked: int = 1) -> FakeUmount:
        fake = FakeUmount(busy=busy, stacked=stacked)
        monkeypatch.setattr(mountmod, "_lib", lambda: fake)
        monkeypatch.setattr(mountmod.ctypes, "get_errno", lambda: fake.errno)
        return fake

    return install


def test_unmount_all_fails_on_a_busy_mount_by_default(
    umount: Callable[..., FakeUmount], tmp_path: Path
) -> None:
    fake = umount(busy=1000)
    with pytest.raises(MountError) as ei:
        mountmod.unmount_all(tmp_path, retries=3)
    assert ei.value.errno == errno.EBUSY
    assert fake.flags == [0, 0, 0]


def test_unmount_all_detaches_a_busy_mount_when_asked(
    umount: Callable[..., FakeUmount], tmp_path: Path
) -> None:
    fake = umount(busy=1000, stacked=2)
    mountmod.unmount_all(tmp_path, retries=3, detach_busy=True)
    assert fake.stacked == 0
    assert fake.flags[:4] == [0, 0, 0, MNT_DETACH]


def test_unmount_all_retries_briefly_busy_mounts(
    umount: Callable[..., FakeUmount], tmp_path: Path
) -> None:
    fake = umount(busy=2)
    mountmod.unmount_all(tmp_path, retries=3, detach_busy=True)
    assert fake.flags == [0, 0, 0, 0]  # busy, busy, unmounted, then EINVAL: done
    assert fake.stacked == 0


def test_shim_rootfs_mount_undoes_earlier_components_and_uses_containerd_wording(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mounted: list[str] = []
    unmounted: list[tuple[str, int, bool]] = []

    def fake_mount(m: Mount, root: str) -> None:
        if m.source == "bad":
            raise MountError("mount 'bad': No such file or directory", errno.ENOENT)
        mounted.append(m.source)

    def fake_unmount_all(t: str, *, retries: int, detach_busy: bool) -> None:
        unmounted.append((t, retries, detach_busy))

    monkeypatch.setattr(shim_mount, "mount", fake_mount)
    monkeypatch.setattr(shim_mount, "unmount_all", fake_unmount_all)
    with pytest.raises(errdefs.BerthError) as ei:
        shim_mount.mount_rootfs(
            [Mount("tmpfs", "good", ["size=1m"]), Mount("bind", "bad", ["rbind"])], "/b/rootfs"
        )
    assert not isinstance(ei.value, MountError)
    assert str(ei.value) == (
        "failed to mount rootfs component bind bad ['rbind']: No such file or directory"
    )
    assert mounted == ["good"]
    assert unmounted == [("/b/rootfs", 10, True)]


def test_shim_rootfs_first_component_failure_unmounts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_mount(m: Mount, root: str) -> None:
        raise MountError("boom", errno.EINVAL)

    def fake_unmount_all(t: str, **kw: object) -> None:
        raise AssertionError("nothing was mounted")

    monkeypatch.setattr(shim_mount, "mount", fake_mount)
    monkeypatch.setattr(shim_mount, "unmount_all", fake_unmount_all)
    with pytest.raises(errdefs.BerthError, match=r"Invalid argument$"):
        shim_mount.mount_rootfs([Mount("overlay", "overlay", ["lowerdir=/a"])], "/b/rootfs")


def test_shim_mount_imports_no_other_part_of_the_daemon() -> None:
    # The shim shares berth.core.mount with berthd; it must not drag in the
    # rest of berth.core, gRPC or protobuf (the shim's memory is per container).
    code = (
        "import sys, berth.shim.mount\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('berth', 'grpc', 'google'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(out) == [
        "berth",
        "berth.core",
        "berth.core.mount",
        "berth.errdefs",
        "berth.shim",
        "berth.shim.mount",
    ]
