"""berthd start-up, locking, socket handling and shutdown, with a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from berth.api.services.version.v1 import version_pb2_grpc
from tests.support.daemon import Berthd, short_tmpdir

pytestmark = pytest.mark.integration


def _run_berthd(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_socket_and_dir_modes(berthd: Berthd) -> None:
    assert stat.S_IMODE(os.stat(berthd.address).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(berthd.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(berthd.state).st_mode) == 0o711
    assert (berthd.root / "io.containerd.metadata.v1.sqlite" / "meta.db").exists()


def test_sigterm_shuts_down_cleanly(berthd: Berthd) -> None:
    assert berthd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(berthd.address)
    assert "berthd stopped" in berthd.logs()


def test_sigint_shuts_down_cleanly(berthd: Berthd) -> None:
    assert berthd.stop(signal.SIGINT) == 0
    assert not os.path.exists(berthd.address)


def test_second_daemon_on_same_root_refuses(berthd: Berthd) -> None:
    other = berthd.base / "other.sock"
    res = _run_berthd(
        ["--root", str(berthd.root), "--state", str(berthd.state), "--address", str(other)]
    )
    assert res.returncode == 1
    assert "already using root" in res.stderr
    assert str(berthd.proc.pid if berthd.proc else "") in res.stderr
    assert not other.exists()
    assert berthd.ready()


def test_stale_socket_is_replaced() -> None:
    base = short_tmpdir()
    d = Berthd(base)
    try:
        d.start()
        d.kill9()  # a crash leaves the socket file behind
        assert os.path.exists(d.address)
        d.start()
        with grpc.insecure_channel(f"unix://{d.address}") as ch:
            version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty(), timeout=10)
        d.stop()
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_socket_path_that_is_a_directory_is_refused() -> None:
    base = short_tmpdir()
    try:
        (base / "sock").mkdir()
        res = _run_berthd(
            [
                "--root",
                str(base / "root"),
                "--state",
                str(base / "state"),
                "--address",
                str(base / "sock"),
            ]
        )
        assert res.returncode == 1
        assert "is a directory" in res.stderr
        # Nothing half-created.
        assert not (base / "root").exists() and not (base / "state").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_socket_in_use_by_another_process_is_refused() -> None:
    base = short_tmpdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = base / "busy.sock"
        listener.bind(str(path))
        listener.listen(1)
        res = _run_berthd(
            ["--root", str(base / "root"), "--state", str(base / "state"), "--address", str(path)]
        )
        assert res.returncode == 1
        assert "in use by another process" in res.stderr
        assert path.exists()
    finally:
        listener.close()
        shutil.rmtree(base, ignore_errors=True)


def test_read_only_root_is_refused() -> None:
    base = short_tmpdir()
    ro = base / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        res = _run_berthd(
            [
                "--root",
                str(ro / "root"),
                "--state",
                str(base / "state"),
                "--address",
                str(base / "s.sock"),
            ]
        )
        assert res.returncode == 1
        assert "cannot create root directory" in res.stderr and "Read-only" in res.stderr
        assert not (base / "s.sock").exists()
    finally:
        subprocess.run(["umount", str(ro)], check=True)
        shutil.rmtree(base, ignore_errors=True)


def test_malformed_config_names_file_and_key() -> None:
    base = short_tmpdir()
    try:
        cfg = base / "config.toml"
        cfg.write_text('version = 2\n[grpc]\naddress = "/x"\nbogus = 1\n')
        res = _run_berthd(["--config", str(cfg), "--root", str(base / "root")])
        assert res.returncode == 1
        assert str(cfg) in res.stderr and "grpc.bogus" in res.stderr
        cfg.write_text("version = 2\n[grpc\n")
        res = _run_berthd(["--config", str(cfg), "--root", str(base / "root")])
        assert res.returncode == 1 and "not valid TOML" in res.stderr
        assert not (base / "root").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_missing_config_file_given_explicitly_fails() -> None:
    res = _run_berthd(["--config", "/nonexistent/berth.toml"])
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_config_dump_reflects_flags() -> None:
    res = _run_berthd(["--root", "/tmp/x-root", "--log-level", "debug", "config", "dump"])
    assert res.returncode == 0, res.stderr
    assert 'root = "/tmp/x-root"' in res.stdout and 'level = "debug"' in res.stdout


def test_disabled_plugin_is_skipped_and_required_failure_is_fatal() -> None:
    base = short_tmpdir()
    d = Berthd(base, config='version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.leases"]\n')
    try:
        d.start()
        out = d.ctr("plugins", "ls").stdout
        row = next(line for line in out.splitlines() if "leases" in line)
        assert row.split()[-1] == "skip"
        res = d.ctr("leases", "ls", check=False)
        assert res.returncode != 0 and "not implemented" in res.stderr
        d.stop()
        cfg = (
            'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.leases"]\n'
            'required_plugins = ["io.containerd.grpc.v1.leases"]\n'
        )
        (base / "config.toml").write_text(cfg)
        res = _run_berthd(d.argv()[3:])
        assert res.returncode == 1 and "required plugins failed" in res.stderr
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_grpc_codes_match_containerd(berthd: Berthd) -> None:
    with grpc.insecure_channel(f"unix://{berthd.address}") as ch:
        ns = namespace_pb2_grpc.NamespacesStub(ch)
        leases = leases_pb2_grpc.LeasesStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            ns.Get(namespace_pb2.GetNamespaceRequest(name="nope"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as ei:
            ns.Create(
                namespace_pb2.CreateNamespaceRequest(
                    namespace=namespace_pb2.Namespace(name="-bad")
                ),
                timeout=10,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # No namespace in the metadata: containerd answers FailedPrecondition.
        with pytest.raises(grpc.RpcError) as ei:
            leases.List(leases_pb2.ListRequest(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "namespace is required" in (ei.value.details() or "")
        with pytest.raises(grpc.RpcError) as ei:
            leases.List(
                leases_pb2.ListRequest(), metadata=[("containerd-namespace", "a b")], timeout=10
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:
            leases.List(
                leases_pb2.ListRequest(filters=["id=="]),
                metadata=[("containerd-namespace", "x")],
                timeout=10,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:
            ns.Update(
                namespace_pb2.UpdateNamespaceRequest(
                    namespace=namespace_pb2.Namespace(name="default"),
                    update_mask={"paths": ["name"]},
                ),
                timeout=10,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # An oversized label is refused and nothing is created.
        big = {"k": "v" * 5000}
        with pytest.raises(grpc.RpcError) as ei:
            ns.Create(
                namespace_pb2.CreateNamespaceRequest(
                    namespace=namespace_pb2.Namespace(name="big", labels=big)
                ),
                timeout=10,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        names = [
            n.name for n in ns.List(namespace_pb2.ListNamespacesRequest(), timeout=10).namespaces
        ]
        assert "big" not in names


def test_metadata_survives_restart(berthd: Berthd) -> None:
    berthd.ctr("namespaces", "create", "persist", "k=v")
    berthd.stop()
    berthd.start()
    assert "k=v" in berthd.ctr("namespaces", "ls").stdout


@pytest.mark.parametrize("path", [Path("/tmp")])
def test_root_help_is_explanatory(path: Path) -> None:
    res = _run_berthd(["--help"])
    assert res.returncode == 0
    assert "--root" in res.stdout and "config default" in res.stdout


def test_proxy_plugins_are_listed_as_unsupported_not_ignored() -> None:
    base = short_tmpdir()
    d = Berthd(
        base,
        config='version = 2\n[proxy_plugins.ext]\ntype = "snapshot"\naddress = "/run/ext.sock"\n',
    )
    try:
        d.start()
        out = d.ctr("plugins", "ls").stdout
        row = next(line for line in out.splitlines() if " ext " in f" {line} ")
        assert row.split()[0] == "io.containerd.snapshotter.v1" and row.split()[-1] == "error"
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
