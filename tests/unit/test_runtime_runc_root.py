"""runc's state directory for the shims berthd starts: the ``runc_root``
setting, how a task's runtime options get a default ``Root`` (and when they
are left alone), and that the options a runc shim receives on ``start`` and
in ``Create`` carry it. Two daemons side by side are tested in
tests/integration/test_runc_root_isolation.py."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, empty_pb2

from berth import config
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.config import ConfigError
from berth.core.metadata.containers import AnyValue
from berth.core.runtime import CreateOpts, TaskManager
from berth.core.runtime.manager import default_runc_root
from berth.core.runtime.plugin import REGISTRATION, RuntimeConfig
from berth.core.runtime.shim import RUNC_OPTIONS_TYPE, is_runc_options, with_runc_root
from berth.shim import container as shim_container
from berth.shim import main as shim_main
from berth.ttrpc import CallContext, Server
from tests.support.daemon import short_tmpdir
from tests.support.runtime import task_manager

SECTION = '[plugins."io.containerd.runtime.v2.task"]'
ROOT = "/run/berth/runc"
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
GO_SHIM_V1 = "/usr/bin/containerd-shim-runc-v1"
BERTH_SHIM = "/opt/berth/bin/containerd-shim-berth-v2"
OTHER_SHIM = "/opt/kata/bin/containerd-shim-kata-v2"


def runc_options(**fields: Any) -> AnyValue:
    return AnyValue(RUNC_OPTIONS_TYPE, oci_pb2.Options(**fields).SerializeToString())


def decoded(v: AnyValue | None) -> oci_pb2.Options:
    assert v is not None and is_runc_options(v)
    return oci_pb2.Options.FromString(v.value)


FOREIGN = AnyValue("io.containerd.kata.v2.Options", b"\x0a\x03abc")


# -- filling in Root -----------------------------------------------------------------


def test_absent_options_become_runc_options_naming_only_the_root() -> None:
    got = with_runc_root(None, ROOT)
    # The bare message name: the form the Go shim resolves.
    assert got.type_url == "containerd.runc.v1.Options"
    assert decoded(got) == oci_pb2.Options(root=ROOT)


@pytest.mark.parametrize(
    "type_url", ["containerd.runc.v1.Options", "types.googleapis.com/containerd.runc.v1.Options"]
)
def test_empty_root_is_set_and_every_other_field_kept(type_url: str) -> None:
    full = oci_pb2.Options(
        binary_name="/usr/local/bin/runc",
        systemd_cgroup=True,
        no_pivot_root=True,
        no_new_keyring=True,
        criu_path="/usr/sbin/criu",
        criu_work_path="/var/tmp/criu",
        io_uid=1000,
        io_gid=1001,
        shim_cgroup="/shims",
        criu_image_path="/images/c1",
    )
    # A field this build does not know (number 99) must survive as well.
    unknown = b"\x9a\x06\x05later"
    options = AnyValue(type_url, full.SerializeToString() + unknown)

    got = with_runc_root(options, ROOT)
    assert got.type_url == type_url
    assert unknown in got.value
    msg = decoded(got)
    msg.DiscardUnknownFields()
    full.root = ROOT
    assert msg == full


def test_an_explicit_root_is_kept() -> None:
    options = runc_options(root="/elsewhere", binary_name="runc")
    assert with_runc_root(options, ROOT) is options


def test_options_of_another_type_are_untouched() -> None:
    assert with_runc_root(FOREIGN, ROOT) is FOREIGN
    # runc's checkpoint options are not runtime options.
    checkpoint = AnyValue("containerd.runc.v1.CheckpointOptions", b"")
    assert with_runc_root(checkpoint, ROOT) is checkpoint


def test_runc_options_that_do_not_decode_are_left_for_the_shim_to_refuse() -> None:
    garbled = AnyValue(RUNC_OPTIONS_TYPE, b"\x0a\xff")
    assert with_runc_root(garbled, ROOT) is garbled


# -- which shims get it ------------------------------------------------------------------


def manager(base: Path, runc_root: str = "") -> TaskManager:
    return task_manager(base, runc_root=runc_root)


@pytest.fixture
def base() -> Iterator[Path]:
    d = short_tmpdir("b.rr.")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_default_root_is_runc_beside_the_daemon_socket(base: Path) -> None:
    m = manager(base)
    assert m.runc_root == str(base / "runc")
    assert manager(base, "/var/run/runc-berth").runc_root == "/var/run/runc-berth"


@pytest.mark.parametrize(
    "address", ["/run/berth/berth.sock", "unix:///tmp/b.x/s.sock", "/tmp/b.x/../b.y/s.sock"]
)
def test_the_default_root_is_the_one_berths_shim_derives(address: str) -> None:
    # The shim lives apart from the daemon (they share only ttrpc and oci),
    # so each spells the rule; this keeps the two the same.
    expected = shim_container.default_runc_root(shim_main.state_dir(address))
    assert default_runc_root(address) == expected


@pytest.mark.parametrize("shim", [GO_SHIM, GO_SHIM_V1])
def test_go_runc_shims_get_the_root_whether_or_not_options_were_given(
    base: Path, shim: str
) -> None:
    m = manager(base)
    root = str(base / "runc")
    assert decoded(m.shim_options(shim, None)) == oci_pb2.Options(root=root)
    assert decoded(m.shim_options(shim, runc_options(binary_name="runc"))) == oci_pb2.Options(
        root=root, binary_name="runc"
    )
    explicit = runc_options(root="/mine")
    assert m.shim_options(shim, explicit) is explicit
    assert m.shim_options(shim, FOREIGN) is FOREIGN


def test_another_shim_gets_the_root_only_in_runc_options(base: Path) -> None:
    m = manager(base)
    # Nothing says this shim reads runc Options: sending some could break it.
    assert m.shim_options(OTHER_SHIM, None) is None
    assert m.shim_options(OTHER_SHIM, FOREIGN) is FOREIGN
    got = m.shim_options(OTHER_SHIM, runc_options(systemd_cgroup=True))
    assert decoded(got) == oci_pb2.Options(root=str(base / "runc"), systemd_cgroup=True)


def test_berths_shim_is_left_to_its_own_identical_default(base: Path) -> None:
    m = manager(base)
    options = runc_options(binary_name="runc")
    assert m.shim_options(BERTH_SHIM, None) is None
    assert m.shim_options(BERTH_SHIM, options) is options


def test_a_configured_root_reaches_every_runc_options_shim(base: Path) -> None:
    m = manager(base, "/srv/runc")
    for shim in (GO_SHIM, BERTH_SHIM):
        assert decoded(m.shim_options(shim, None)) == oci_pb2.Options(root="/srv/runc")
    explicit = runc_options(root="/mine")
    assert m.shim_options(BERTH_SHIM, explicit) is explicit
    assert m.shim_options(OTHER_SHIM, None) is None


# -- what the shim receives -------------------------------------------------------------

FAKE_GO_SHIM = """#!/bin/sh
for last; do :; done
case "$last" in
  start) cat > {stdin}; printf 'unix://{sock}' > address; cat address ;;
esac
"""


class FakeTask:
    def __init__(self) -> None:
        self.creates: list[api.CreateTaskRequest] = []

    async def Connect(self, ctx: CallContext, r: api.ConnectRequest) -> api.ConnectResponse:
        return api.ConnectResponse(task_pid=7)

    async def Create(self, ctx: CallContext, r: api.CreateTaskRequest) -> api.CreateTaskResponse:
        self.creates.append(r)
        return api.CreateTaskResponse(pid=7)

    async def Wait(self, ctx: CallContext, r: api.WaitRequest) -> api.WaitResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def Shutdown(self, ctx: CallContext, r: api.ShutdownRequest) -> empty_pb2.Empty:
        return empty_pb2.Empty()


@pytest.mark.parametrize(
    ("runtime_options", "task_options"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(runc_options(), None, id="container-options"),
        pytest.param(runc_options(root="/x"), runc_options(no_pivot_root=True), id="task-options"),
    ],
)
def test_start_and_create_carry_the_same_defaulted_options(
    base: Path, runtime_options: AnyValue | None, task_options: AnyValue | None
) -> None:
    binary = base / "containerd-shim-runc-v2"
    stdin, sock = base / "stdin.bin", base / "shim.sock"
    binary.write_text(FAKE_GO_SHIM.format(stdin=stdin, sock=sock))
    binary.chmod(0o755)
    fake = FakeTask()
    effective = task_options if task_options is not None else runtime_options
    want = oci_pb2.Options.FromString(effective.value) if effective else oci_pb2.Options()
    want.root = str(base / "runc")

    async def body() -> None:
        server = Server()
        server.register_service(api.DESCRIPTOR.services_by_name["Task"], fake)
        await server.start(str(sock))
        m = manager(base)
        try:
            await m.create(
                "ns",
                "t1",
                CreateOpts(
                    spec=AnyValue.spec(json.dumps({"ociVersion": "1.0.2"}).encode()),
                    runtime=str(binary),
                    runtime_options=runtime_options,
                    task_options=task_options,
                ),
            )
        finally:
            await m.close()
            await server.close()

    asyncio.run(asyncio.wait_for(body(), 30))
    started = any_pb2.Any.FromString(stdin.read_bytes())
    assert started.type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS_TYPE
    assert oci_pb2.Options.FromString(started.value) == want
    [create] = fake.creates
    assert create.options == started


# -- configuration ---------------------------------------------------------------------


def load(tmp_path: Path, body: str) -> config.Config:
    p = tmp_path / "config.toml"
    p.write_text(f"version = 2\n{SECTION}\n{body}\n")
    return config.load(p, [REGISTRATION])


def test_runc_root_defaults_to_beside_the_socket(tmp_path: Path) -> None:
    assert load(tmp_path, "").plugins[REGISTRATION.uri].runc_root == ""
    assert RuntimeConfig().runc_root == ""


def test_an_absolute_runc_root_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'runc_root = "/run/containerd/runc"')
    assert cfg.plugins[REGISTRATION.uri] == RuntimeConfig(runc_root="/run/containerd/runc")


def test_a_relative_runc_root_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, 'runc_root = "run/runc"')
    msg = str(ei.value)
    assert 'plugins."io.containerd.runtime.v2.task".runc_root' in msg
    assert "absolute" in msg and str(tmp_path) in msg
