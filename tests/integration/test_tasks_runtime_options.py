"""runc's runtime options through berthd: ``BinaryName`` and ``Root`` reach runc.

A wrapper script stands in for runc: it records its arguments and execs the
real binary. Debian's ctr builds runc ``Options`` only for
``io.containerd.runc.v2`` (``--runc-binary``, ``--runc-root``) and refuses
``--runc-binary`` for any other runtime, so Berth's shim gets the same
options from the SDK, once on the container record (where ctr puts them)
and once on the task's create request. berthd fills in a default ``Root``
only when none is given; an explicit one must win. The options also hold
when a shim dies: the cleanup's ``runc delete --force`` goes to the same
binary and root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.api.runtime.v2.runc.options import oci_pb2
from berth.client import AnyValue, Client
from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.oci_bundle import cleanup_base
from tests.support.procs import alive, ppid, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
]

IMAGE = "docker.io/library/berth-runtime-options:1"
BERTH = "io.containerd.berth.v2"
RUNC = "io.containerd.runc.v2"
NS = "default"
RUN = secrets.token_hex(3)  # cgroups are named after namespace and id, host-wide
#: The type URL ctr gives runc's options.
RUNC_OPTIONS = "containerd.runc.v1.Options"


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "busybox.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


def runc_wrapper(where: Path) -> tuple[Path, Path]:
    """A runc stand-in under ``where`` that appends its argv to a log; (script, log)."""
    real = shutil.which("runc")
    assert real is not None
    log = where / "runc-argv.log"
    script = where / "runc-wrapper"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    return script, log


def invocations(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


def subcommands(calls: list[list[str]]) -> set[str]:
    """runc's subcommand in each call: the first word that is not a global flag or its value."""
    found = set()
    for argv in calls:
        i = 0
        while i < len(argv) and argv[i].startswith("--"):
            # --root, --log and --log-format take a value; --systemd-cgroup does not.
            i += 1 if argv[i] == "--systemd-cgroup" else 2
        if i < len(argv):
            found.add(argv[i])
    return found


def assert_root(calls: list[list[str]], root: Path) -> None:
    for argv in calls:
        assert argv[argv.index("--root") + 1] == str(root / NS), argv


def assert_runc_ran_under(calls: list[list[str]], root: Path) -> None:
    assert calls, "the wrapper was never run"
    assert {"create", "start", "delete"} <= subcommands(calls), calls
    assert_root(calls, root)


def test_go_shim_runs_the_named_runc_binary_under_the_named_root(d: Berthd, tmp_path: Path) -> None:
    wrapper, log = runc_wrapper(tmp_path)
    root = tmp_path / "runc-root"
    id = f"bin-runc-{RUN}"
    res = d.ctr(
        "run", "--rm", "--runtime", RUNC, "--runc-binary", str(wrapper), "--runc-root", str(root),
        IMAGE, id, "sh", "-c", "echo ran",
    )  # fmt: skip
    assert res.stdout == "ran\n"
    assert_runc_ran_under(invocations(log), root)
    assert not (root / NS / id).exists()
    assert not (d.base / "runc" / NS / id).exists()


def runc_options(binary: Path, root: Path) -> AnyValue:
    opts = oci_pb2.Options(binary_name=str(binary), root=str(root))
    return AnyValue(RUNC_OPTIONS, opts.SerializeToString())


def create_with_options(d: Berthd, id: str, options: AnyValue, *args: str) -> None:
    """Container ``id`` of Berth's shim running ``args``, with runtime ``options``.

    ctr makes the spec and the snapshot; the record that carries the options
    is made again from them, as a client with options would.
    """
    draft = f"draft-{id}"
    d.ctr("containers", "create", "--runtime", BERTH, "--", IMAGE, draft, *args)
    with Client(d.address, namespace=NS) as c:
        info = c.containers.get(draft)
        assert info.spec is not None
        c.containers.create(
            id,
            spec=info.spec,
            runtime=BERTH,
            runtime_options=options,
            image=info.image,
            snapshotter=info.snapshotter,
            snapshot_key=info.snapshot_key,
        )
        c.containers.delete(draft)


def test_berth_shim_honours_runtime_options_of_the_container(d: Berthd, tmp_path: Path) -> None:
    wrapper, log = runc_wrapper(tmp_path)
    root = tmp_path / "runc-root"
    id = f"bin-berth-{RUN}"
    create_with_options(d, id, runc_options(wrapper, root), "sh", "-c", "echo ran")
    try:
        res = d.ctr("tasks", "start", id)
        assert res.stdout == "ran\n"
    finally:
        d.ctr("containers", "rm", id)
    assert_runc_ran_under(invocations(log), root)
    assert not (root / NS / id).exists()
    assert not (d.base / "runc" / NS / id).exists()
    assert f"draft-{id}" not in d.ctr("snapshots", "ls").stdout


def test_berth_shim_honours_runtime_options_of_the_task(d: Berthd, tmp_path: Path) -> None:
    wrapper, log = runc_wrapper(tmp_path)
    root = tmp_path / "runc-root"
    id = f"task-opts-{RUN}"
    d.ctr("containers", "create", "--runtime", BERTH, IMAGE, id, "true")
    try:
        with Client(d.address, namespace=NS) as c:
            task = c.load_container(id).new_task(options=runc_options(wrapper, root))
            task.start()
            assert task.wait(timeout=30).code == 0
            assert task.delete().code == 0
    finally:
        d.ctr("tasks", "rm", "--force", id, check=False)
        d.ctr("containers", "rm", id)
    assert_runc_ran_under(invocations(log), root)
    assert not (root / NS / id).exists()
    assert not (d.base / "runc" / NS / id).exists()


def task_line(d: Berthd, id: str) -> list[str]:
    """``[id, pid, status]`` from ``ctr tasks ls``; [] when there is no task."""
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        if line.split()[:1] == [id]:
            return line.split()
    return []


@pytest.mark.parametrize("runtime", [BERTH, RUNC], ids=["berth-shim", "runc-shim"])
def test_cleanup_after_a_dead_shim_uses_the_named_binary_and_root(
    d: Berthd, tmp_path: Path, runtime: str
) -> None:
    # The daemon runs the shim binary's delete, which reads the options the
    # shim recorded in the bundle: runc delete --force must go to the same runc.
    wrapper, log = runc_wrapper(tmp_path)
    root = tmp_path / "runc-root"
    id = f"dead-{runtime.split('.')[-2]}-{RUN}"
    if runtime == RUNC:
        d.ctr(
            "run", "-d", "--runtime", RUNC, "--runc-binary", str(wrapper),
            "--runc-root", str(root), IMAGE, id, "sleep", "1000",
        )  # fmt: skip
    else:
        create_with_options(d, id, runc_options(wrapper, root), "sleep", "1000")
        d.ctr("tasks", "start", "--detach", id)
    try:
        pid = int(task_line(d, id)[1])
        assert (root / NS / id / "state.json").is_file()
        before = len(invocations(log))
        os.kill(ppid(pid), signal.SIGKILL)
        assert wait_until(lambda: task_line(d, id)[2:] == ["STOPPED"]), task_line(d, id)
        assert wait_until(lambda: not alive(pid))
        cleanup = invocations(log)[before:]
        assert any(argv[-3:] == ["delete", "--force", id] for argv in cleanup), cleanup
        assert_root(cleanup, root)
        assert not (root / NS / id).exists()
        assert "137" in d.ctr("tasks", "rm", id).stderr
    finally:
        d.ctr("tasks", "rm", "--force", id, check=False)
        d.ctr("containers", "rm", id)


@pytest.fixture(scope="module")
def configured(busybox_image: Image) -> Iterator[tuple[Berthd, Path]]:
    """A daemon whose ``runc_root`` setting gives every task without a Root one; and that root."""
    base = short_tmpdir()
    root = base / "configured-runc"
    daemon = Berthd(
        base,
        config=f'version = 2\n[plugins."io.containerd.runtime.v2.task"]\n runc_root = "{root}"\n',
    )
    try:
        daemon.start()
        layout = write_oci_layout(base / "busybox.tar", busybox_image, image_name=IMAGE)
        daemon.ctr("images", "import", str(layout))
        yield daemon, root
    finally:
        daemon.stop()
        cleanup_base(base)


@pytest.mark.parametrize("runtime", [BERTH, RUNC], ids=["berth-shim", "runc-shim"])
def test_explicit_options_win_over_the_configured_runc_root(
    configured: tuple[Berthd, Path], tmp_path: Path, runtime: str
) -> None:
    d, configured_root = configured
    wrapper, log = runc_wrapper(tmp_path)
    root = tmp_path / "runc-root"
    id = f"explicit-{runtime.split('.')[-2]}-{RUN}"
    if runtime == RUNC:
        d.ctr(
            "run", "--rm", "--runtime", RUNC, "--runc-binary", str(wrapper),
            "--runc-root", str(root), IMAGE, id, "true",
        )  # fmt: skip
    else:
        create_with_options(d, id, runc_options(wrapper, root), "true")
        try:
            d.ctr("tasks", "start", id)
        finally:
            d.ctr("containers", "rm", id)
    assert_runc_ran_under(invocations(log), root)
    assert not configured_root.exists()
