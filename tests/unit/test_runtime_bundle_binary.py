"""Bundles on disk and runtime-name resolution, without any shim running."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from berth import errdefs
from berth.api.runtime.v2.task import shim_pb2
from berth.core.runtime import binary_name, resolve_runtime_path
from berth.core.runtime.bundle import new_bundle
from berth.core.runtime.shim import decode_delete_response

SPEC = json.dumps({"ociVersion": "1.0.2", "process": {"args": ["true"]}}).encode()


# -- runtime names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "binary"),
    [
        ("io.containerd.runc.v2", "containerd-shim-runc-v2"),
        ("io.containerd.berth.v2", "containerd-shim-berth-v2"),
        ("io.containerd.runc.v1", "containerd-shim-runc-v1"),
        ("runsc.v1", "containerd-shim-runsc-v1"),
        ("runc", ""),
        ("", ""),
    ],
)
def test_runtime_names_map_to_shim_binaries_as_in_containerd(runtime: str, binary: str) -> None:
    assert binary_name(runtime) == binary


def _exe(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_resolution_prefers_path_then_the_daemon_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "bin"
    beside = tmp_path / "venv"
    on_path.mkdir()
    beside.mkdir()
    _exe(beside / "containerd-shim-fake-v1")
    monkeypatch.setenv("PATH", str(on_path))
    found = resolve_runtime_path("io.containerd.fake.v1", extra_dirs=[str(beside)])
    assert found == str(beside / "containerd-shim-fake-v1")
    _exe(on_path / "containerd-shim-fake-v1")
    found = resolve_runtime_path("io.containerd.fake.v1", extra_dirs=[str(beside)])
    assert found == str(on_path / "containerd-shim-fake-v1")


def test_resolution_errors_say_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errdefs.BerthError) as err:
        resolve_runtime_path("io.containerd.nosuch.v1", extra_dirs=[])
    assert err.value.code == errdefs.CODE_UNKNOWN  # as containerd: a wrapped os error
    assert str(err.value) == (
        'runtime "io.containerd.nosuch.v1" binary not installed'
        ' "containerd-shim-nosuch-v1": file does not exist'
    )
    with pytest.raises(errdefs.BerthError, match="invalid runtime name runc"):
        resolve_runtime_path("runc", extra_dirs=[])
    with pytest.raises(errdefs.BerthError, match="no runtime name"):
        resolve_runtime_path("", extra_dirs=[])
    missing = tmp_path / "nope"
    with pytest.raises(errdefs.BerthError, match=f"invalid custom binary path: stat {missing}"):
        resolve_runtime_path(str(missing))
    shim = _exe(tmp_path / "my-shim")
    assert resolve_runtime_path(str(shim)) == str(shim)


# -- bundles -----------------------------------------------------------------------------


def test_new_bundle_lays_out_config_rootfs_and_work_link(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "root"
    b = new_bundle(state, root, "ns", "c1", SPEC)
    assert b.path == state / "ns" / "c1"
    assert (b.path / "config.json").read_bytes() == SPEC
    assert b.rootfs.is_dir()
    assert os.readlink(b.path / "work") == str(root / "ns" / "c1")
    assert stat.S_IMODE(b.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "ns").stat().st_mode) == 0o711


def test_new_bundle_refuses_duplicates_and_bad_ids(tmp_path: Path) -> None:
    new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", SPEC)
    with pytest.raises(errdefs.AlreadyExists):
        new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", SPEC)
    with pytest.raises(errdefs.InvalidArgument, match="invalid task id a/b"):
        new_bundle(tmp_path / "s", tmp_path / "r", "ns", "a/b", SPEC)
    assert not (tmp_path / "s" / "ns" / "a").exists()


def test_new_bundle_replaces_a_stale_work_dir(tmp_path: Path) -> None:
    stale = tmp_path / "r" / "ns" / "c1"
    stale.mkdir(parents=True)
    (stale / "old").write_text("x")
    new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", SPEC)
    assert list(stale.iterdir()) == []


def test_user_namespace_bundles_are_group_traversable(tmp_path: Path) -> None:
    spec = json.dumps(
        {"linux": {"gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}
    ).encode()
    b = new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", spec)
    st = b.path.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (100000, 0o710)


def test_delete_removes_bundle_and_work_dir(tmp_path: Path) -> None:
    b = new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", SPEC)
    (b.path / "address").write_text("unix:///x")
    b.delete()
    assert not b.path.exists()
    assert not (tmp_path / "r" / "ns" / "c1").exists()
    assert list((tmp_path / "s" / "ns").iterdir()) == []
    b.delete()  # already gone: nothing to do


def test_delete_never_removes_through_a_rootfs_it_cannot_clear(tmp_path: Path) -> None:
    b = new_bundle(tmp_path / "s", tmp_path / "r", "ns", "c1", SPEC)
    # Not a mount point, yet not empty: as if an unmount had silently failed.
    (b.rootfs / "precious").write_text("container data")
    with pytest.raises(errdefs.BerthError, match="failed to remove bundle rootfs"):
        b.delete()
    assert (b.rootfs / "precious").read_text() == "container data"
    assert (b.path / "config.json").exists()


def test_delete_response_decodes_to_an_exit() -> None:
    raw = shim_pb2.DeleteResponse(pid=7, exit_status=137)
    raw.exited_at.FromNanoseconds(1_500_000_000_123)
    exit = decode_delete_response(raw.SerializeToString())
    assert (exit.pid, exit.status, exit.exited_at_ns) == (7, 137, 1_500_000_000_123)
    with pytest.raises(errdefs.BerthError, match="cannot decode shim delete response"):
        decode_delete_response(b"\xff\xff\xff")
