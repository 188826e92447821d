"""Opt-in shim grouping: the ``shim_group`` setting, how the group reaches
the shim (``BERTH_SHIM_GROUP`` on ``start``, never the spec), how the shim
picks its group, and the per-group gate that keeps a shutdown from racing a
create. The real shim sharing a server is tested in
tests/integration/test_shim_grouping.py."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import config
from berth.config import ConfigError
from berth.core.runtime import TaskManager
from berth.core.runtime.binary import SHIM_GROUP_ENV, ShimBinary
from berth.core.runtime.bundle import new_bundle
from berth.core.runtime.manager import NAMESPACE_GROUP, _Gate
from berth.core.runtime.plugin import REGISTRATION, RuntimeConfig
from berth.shim import main as shim_main
from tests.support.daemon import short_tmpdir
from tests.support.runtime import task_manager

SECTION = '[plugins."io.containerd.runtime.v2.task"]'


@pytest.fixture
def base() -> Iterator[Path]:
    d = short_tmpdir("b.grp.")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def load(tmp_path: Path, body: str) -> config.Config:
    p = tmp_path / "config.toml"
    p.write_text(f"version = 2\n{SECTION}\n{body}\n")
    return config.load(p, [REGISTRATION])


# -- configuration ---------------------------------------------------------------------


def test_shim_group_defaults_to_one_shim_per_container(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.plugins[REGISTRATION.uri].shim_group == ""
    assert RuntimeConfig().shim_group == ""


def test_shim_group_namespace_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'shim_group = "namespace"')
    assert cfg.plugins[REGISTRATION.uri] == RuntimeConfig(shim_group="namespace")


@pytest.mark.parametrize("value", ['"pod"', '"Namespace"', '" namespace"', '"container"'])
def test_unknown_shim_group_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, f"shim_group = {value}")
    msg = str(ei.value)
    assert 'plugins."io.containerd.runtime.v2.task".shim_group' in msg
    assert "'namespace'" in msg and str(tmp_path) in msg


def test_shim_group_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shim_group: expected a string"):
        load(tmp_path, "shim_group = true")


# -- which tasks are grouped -------------------------------------------------------------


def manager(base: Path, shim_group: str) -> TaskManager:
    return task_manager(base, shim_group=shim_group)


def test_only_berths_shim_is_grouped_and_only_when_configured(base: Path) -> None:
    grouped = manager(base, "namespace")
    assert grouped.shim_group("/usr/bin/containerd-shim-berth-v2") == NAMESPACE_GROUP
    # Debian's Go shim groups by annotation only and never reads the variable.
    assert grouped.shim_group("/usr/bin/containerd-shim-runc-v2") == ""
    assert manager(base, "").shim_group("/usr/bin/containerd-shim-berth-v2") == ""


def test_namespace_group_cannot_be_a_container_id() -> None:
    from berth import errdefs, identifiers

    # Ungrouped shims are named after their container's id: the two must
    # never meet on one socket.
    with pytest.raises(errdefs.InvalidArgument):
        identifiers.validate(NAMESPACE_GROUP)


# -- passing the group to the shim -------------------------------------------------------

FAKE_SHIM = """#!/bin/sh
printf '%s' "${BERTH_SHIM_GROUP-<unset>}" > {out}
printf 'unix:///nowhere'
"""


def run_start(base: Path, group: str) -> tuple[str, bytes]:
    """Run ``start`` of a fake shim; return what it saw as its group and the spec after."""
    out = base / "group-seen"
    binary = base / "containerd-shim-berth-v2"
    binary.write_text(FAKE_SHIM.replace("{out}", str(out)))
    binary.chmod(0o755)
    spec = json.dumps({"ociVersion": "1.0.2", "annotations": {"a": "b"}}).encode()
    bundle = new_bundle(base / "state", base / "root", "ns", "t1", spec)
    shim = ShimBinary(
        str(binary),
        bundle,
        address=str(base / "d.sock"),
        ttrpc_address=str(base / "d.sock.ttrpc"),
        publish_binary="/usr/bin/true",
    )
    address = asyncio.run(shim.start(None, group=group))
    assert address == "unix:///nowhere"
    return out.read_text(), (bundle.path / "config.json").read_bytes()


def test_start_gets_the_group_in_its_environment_and_the_spec_is_untouched(
    base: Path,
) -> None:
    seen, spec = run_start(base, NAMESPACE_GROUP)
    assert seen == NAMESPACE_GROUP
    assert json.loads(spec) == {"ociVersion": "1.0.2", "annotations": {"a": "b"}}


def test_ungrouped_start_never_inherits_a_group_from_the_daemon(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHIM_GROUP_ENV, "leaked")
    seen, _ = run_start(base, "")
    assert seen == "<unset>"


# -- how the shim picks its group -------------------------------------------------------


def write_spec(d: Path, annotations: dict[str, str]) -> None:
    (d / "config.json").write_text(json.dumps({"annotations": annotations}))


@pytest.mark.parametrize(
    ("annotations", "environ", "want"),
    [
        ({}, {}, "c1"),
        ({}, {"BERTH_SHIM_GROUP": "@namespace"}, "@namespace"),
        ({}, {"BERTH_SHIM_GROUP": ""}, "c1"),
        ({"io.containerd.runc.v2.group": "g"}, {"BERTH_SHIM_GROUP": "@namespace"}, "g"),
        ({"io.kubernetes.cri.sandbox-id": "sb"}, {"BERTH_SHIM_GROUP": "@namespace"}, "sb"),
    ],
)
def test_shim_group_is_the_annotation_then_the_environment_then_the_id(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    annotations: dict[str, str],
    environ: dict[str, str],
    want: str,
) -> None:
    write_spec(tmp_path, annotations)
    monkeypatch.chdir(tmp_path)
    assert shim_main._grouping("c1", environ) == want


def test_grouped_containers_of_a_namespace_share_a_socket_and_namespaces_do_not() -> None:
    a = shim_main.socket_address("/run/b/b.sock", "ns1", NAMESPACE_GROUP)
    assert a == shim_main.socket_address("/run/b/b.sock", "ns1", NAMESPACE_GROUP)
    assert a != shim_main.socket_address("/run/b/b.sock", "ns2", NAMESPACE_GROUP)
    assert a != shim_main.socket_address("/run/b/b.sock", "ns1", "c1")
    assert a.startswith("unix:///run/b/s/")


# -- the per-group gate ----------------------------------------------------------------


def gate_test(body: object) -> None:
    asyncio.run(asyncio.wait_for(body, 5))  # type: ignore[arg-type]


def test_creates_share_the_gate() -> None:
    async def body() -> None:
        gate = _Gate()
        inside = 0
        peak = 0

        async def create() -> None:
            nonlocal inside, peak
            async with gate.shared():
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.02)
                inside -= 1

        await asyncio.gather(*(create() for _ in range(4)))
        assert peak == 4

    gate_test(body())


def test_shutdown_waits_for_creates_in_flight_and_later_creates_wait_for_it() -> None:
    async def body() -> None:
        gate = _Gate()
        order: list[str] = []
        started = asyncio.Event()

        async def create(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            async with gate.shared():
                order.append(f"{name}+")
                started.set()
                await asyncio.sleep(0.05)
                order.append(f"{name}-")

        async def shutdown() -> None:
            await started.wait()
            async with gate.alone():
                order.append("shutdown+")
                await asyncio.sleep(0.05)
                order.append("shutdown-")

        # "late" asks while the shutdown waits: it must not overtake it.
        await asyncio.gather(create("early", 0), shutdown(), create("late", 0.01))
        assert order == ["early+", "early-", "shutdown+", "shutdown-", "late+", "late-"]

    gate_test(body())


def test_a_cancelled_waiter_does_not_wedge_the_gate() -> None:
    async def body() -> None:
        gate = _Gate()
        async with gate.shared():
            waiter = asyncio.create_task(gate.alone().__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert (gate.sharing, gate.exclusive, gate.waiting) == (0, False, 0)
        async with gate.alone():
            assert gate.exclusive
        async with gate.shared():
            assert gate.sharing == 1

    gate_test(body())


def test_manager_drops_gates_nobody_holds(base: Path) -> None:
    m = manager(base, "namespace")

    async def body() -> None:
        async with m._in_group("ns", NAMESPACE_GROUP):
            assert list(m._gates) == [("ns", NAMESPACE_GROUP)]
        async with m._in_group("ns", ""):
            pass  # ungrouped tasks skip the gate
        assert m._gates == {}

    gate_test(body())
