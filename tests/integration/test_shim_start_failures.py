"""``start`` failing after it launched its server leaves nothing behind: no
server, no zygote child, no socket file, and the group's address is free
for the next start. The failure is a real one: a ``ShimCgroup`` the server
cannot be moved into."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.shim import zygote
from berth.shim.main import socket_address
from berth.ttrpc import Client, ServiceStub
from tests.support.oci_bundle import SHIM_BINARY, TASK_SERVICE, cleanup_base, short_dir
from tests.support.procs import processes_mentioning, wait_until

pytestmark = pytest.mark.integration

NAMESPACE = "start-failures"


def _options(shim_cgroup: str) -> bytes:
    opts = oci_pb2.Options(shim_cgroup=shim_cgroup)
    return any_pb2.Any(
        type_url="containerd.runc.v1.Options", value=opts.SerializeToString()
    ).SerializeToString()


@pytest.fixture
def base() -> Iterator[Path]:
    d = short_dir()
    try:
        yield d
    finally:
        # Whatever a failing test left running is ours (its command line
        # names this directory): end it by pid before removing the files.
        for pid in processes_mentioning(str(d)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        cleanup_base(d)


def _start(
    base: Path, id: str, zygote_on: bool, stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    bundle = base / "bundles" / id
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text("{}")
    address = str(base / "d.sock")
    env = dict(os.environ, TTRPC_ADDRESS=address + ".ttrpc")
    env[zygote.DISABLE_ENV] = "1" if zygote_on else "0"
    env[zygote.LINGER_ENV] = "0"
    argv = [SHIM_BINARY, "-namespace", NAMESPACE, "-address", address]
    argv += ["-publish-binary", "/bin/false", "-id", id, "start"]
    return subprocess.run(argv, cwd=bundle, input=stdin, capture_output=True, env=env, timeout=60)


async def _shut_down(address: str) -> None:
    client = await Client.connect(address, timeout=5)
    try:
        await ServiceStub(client, TASK_SERVICE).Shutdown(api.ShutdownRequest(id="x"))
    finally:
        await client.close()


@pytest.mark.parametrize("zygote_on", [True, False], ids=["zygote", "spawned"])
def test_start_kills_the_server_it_launched_when_joining_the_cgroup_fails(
    base: Path, zygote_on: bool
) -> None:
    id = f"sf-{os.getpid()}-{int(zygote_on)}"
    # Under every cgroup hierarchy, cgroup.procs is a file: no directory can
    # be made beneath it, so moving the server there fails after its launch.
    failed = _start(base, id, zygote_on, _options(f"cgroup.procs/{id}"))
    assert failed.returncode != 0
    assert failed.stdout == b""
    assert b"cgroup.procs" in failed.stderr, failed.stderr

    path = socket_address(str(base / "d.sock"), NAMESPACE, id).removeprefix("unix://")
    assert not os.path.exists(path)
    # Neither the server nor (its last child gone, lingering 0 s) the zygote
    # is left: each names the daemon address under ``base`` on its command line.
    assert wait_until(lambda: not processes_mentioning(str(base))), [
        Path(f"/proc/{p}/cmdline").read_bytes() for p in processes_mentioning(str(base))
    ]
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]

    # The group's address is free: the next start launches a server there.
    ok = _start(base, id, zygote_on, b"")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode() == "unix://" + path
    asyncio.run(_shut_down(path))
    assert wait_until(lambda: not processes_mentioning(str(base)))
    assert not os.path.exists(path)
