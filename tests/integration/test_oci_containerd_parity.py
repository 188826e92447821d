"""Berth's generated specs against the ones containerd 1.6 itself produces.

Two references, both the real Debian containerd rather than a transcription
of its source:

* ``ctr oci spec`` builds containerd's base Unix spec in-process (no daemon);
* ``ctr containers create`` against a private ``containerd`` (temporary root,
  state and socket, CRI disabled) stores the full spec ``ctr run`` would use
  for the busybox test image, read back with ``ctr containers info``. The
  same flags are then expressed as Berth options and the specs compared
  whole: seccomp profile, devices, env, user and groups included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from berth import oci
from berth.oci import spec as spec_mod
from tests.support.imagebuilder import build_busybox_image, write_oci_layout

pytestmark = pytest.mark.integration

CTR = shutil.which("ctr")
CONTAINERD = shutil.which("containerd")
IMAGE = "docker.io/library/busybox:latest"
NAMESPACE = "parity"
TIMEOUT = 30


def _ctr(*args: str, address: str | None = None) -> str:
    if CTR is None:
        pytest.skip("ctr is not installed (Debian package 'containerd')")
    cmd = [CTR, *(("--address", address) if address else ()), "--namespace", NAMESPACE, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
    return done.stdout


def test_default_spec_equals_containerds_base_spec() -> None:
    theirs = json.loads(_ctr("oci", "spec"))
    # ctr generates for an empty container id, so its cgroup path is the
    # namespace alone; Berth needs a real id.
    ours = oci.default_spec("x", NAMESPACE)
    ours["linux"]["cgroupsPath"] = f"/{NAMESPACE}"
    # What Berth's default adds to containerd's base spec (see
    # berth.oci.spec): the default PATH (added with the image config), the
    # standard device allow-list (added by ctr run) and seccomp (added by
    # ctr --seccomp).
    del ours["process"]["env"]
    del ours["linux"]["seccomp"]
    assert ours["linux"]["resources"]["devices"] == spec_mod.default_devices()
    ours["linux"]["resources"]["devices"] = ours["linux"]["resources"]["devices"][:1]
    assert ours == theirs


class Containerd:
    """A private containerd serving on a socket under a short temporary directory."""

    def __init__(self, base: Path) -> None:
        assert CONTAINERD is not None
        self.base = base
        self.address = str(base / "c.sock")
        config = base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{base}/root"\n'
            f'state = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[debug]\n  address = "{base}/debug.sock"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{base}/opt"\n'
        )
        self.log = (base / "containerd.log").open("wb")
        self.proc = subprocess.Popen(
            [CONTAINERD, "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(self.address):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (base / "containerd.log").read_text(errors="replace")
                raise RuntimeError(f"containerd did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def ctr(self, *args: str) -> str:
        return _ctr(*args, address=self.address)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        self.log.close()


@pytest.fixture(scope="module")
def parity_env() -> Iterator[tuple[Containerd, Path, dict[str, Any]]]:
    if CTR is None or CONTAINERD is None:
        pytest.skip("containerd/ctr are not installed (Debian package 'containerd')")
    base = Path(tempfile.mkdtemp(prefix="b.cd.", dir="/tmp"))
    image = build_busybox_image()
    write_oci_layout(base / "image.tar", image, image_name=IMAGE)
    rootfs = base / "rootfs"
    rootfs.mkdir()
    subprocess.run(
        ["tar", "-x", "-C", str(rootfs)], input=image.layers[0].tar, check=True, timeout=TIMEOUT
    )
    daemon = Containerd(base)
    try:
        daemon.ctr("images", "import", str(base / "image.tar"))
        yield daemon, rootfs, json.loads(image.config)
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def _their_spec(daemon: Containerd, cid: str, flags: list[str]) -> tuple[Any, dict[str, str]]:
    daemon.ctr("containers", "create", *flags, IMAGE, cid)
    try:
        info = json.loads(daemon.ctr("containers", "info", cid))
    finally:
        daemon.ctr("containers", "delete", cid)
    return info["Spec"], info.get("Labels") or {}


@dataclass(frozen=True)
class Case:
    """ctr flags, and the same request as Berth options around the image config.

    ctr applies env and mounts before the image config and the rest after
    it; the Berth options keep that order.
    """

    flags: tuple[str, ...]
    before_image: tuple[oci.SpecOpt, ...] = ()
    after_image: tuple[oci.SpecOpt, ...] = ()


CASES: dict[str, Case] = {
    "plain": Case(()),
    "env-cwd": Case(
        ("--env", "A=1", "--env", "PATH=/custom", "--cwd", "/tmp"),
        before_image=(oci.with_env(["A=1", "PATH=/custom"]),),
        after_image=(oci.with_process_cwd("/tmp"),),
    ),
    "mount-readonly-tty": Case(
        ("--mount", "type=bind,src=/tmp,dst=/data,options=rbind:ro", "--read-only", "--tty"),
        before_image=(oci.with_mounts([oci.Mount("/data", "bind", "/tmp", ("rbind", "ro"))]),),
        after_image=(oci.with_readonly_rootfs, oci.with_tty),
    ),
    "caps": Case(
        ("--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SYS_PTRACE", "--cap-drop", "CAP_KILL"),
        after_image=(
            oci.with_capabilities(add=["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], drop=["CAP_KILL"]),
        ),
    ),
    "memory-newprivs": Case(
        ("--memory-limit", str(64 << 20), "--allow-new-privs"),
        after_image=(oci.with_new_privileges, oci.with_memory_limit(64 << 20)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_spec_equals_containerds_for_the_same_request(
    parity_env: tuple[Containerd, Path, dict[str, Any]], name: str
) -> None:
    daemon, rootfs, image_config = parity_env
    case = CASES[name]
    cid = f"p-{name}"
    theirs, their_labels = _their_spec(daemon, cid, [*case.flags, "--seccomp"])
    labels: dict[str, str] = {}
    ours = oci.generate(
        cid,
        NAMESPACE,
        *case.before_image,
        oci.with_image_config(image_config),
        *case.after_image,
        rootfs=rootfs,
        labels=labels,
    )
    assert ours == theirs
    assert labels == their_labels


def test_host_network_equals_containerds(
    parity_env: tuple[Containerd, Path, dict[str, Any]],
) -> None:
    daemon, rootfs, image_config = parity_env
    theirs, _ = _their_spec(daemon, "p-net-host", ["--net-host", "--seccomp"])
    ours = oci.generate(
        "p-net-host",
        NAMESPACE,
        oci.with_image_config(image_config),
        oci.with_host_network,
        oci.with_env([f"HOSTNAME={socket.gethostname()}"]),  # ctr adds it with --net-host
        rootfs=rootfs,
    )
    assert ours == theirs


def test_privileged_equals_containerds(
    parity_env: tuple[Containerd, Path, dict[str, Any]],
) -> None:
    daemon, rootfs, image_config = parity_env
    theirs, _ = _their_spec(daemon, "p-priv", ["--privileged"])
    ours = oci.generate(
        "p-priv",
        NAMESPACE,
        oci.with_image_config(image_config),
        oci.with_privileged(),
        rootfs=rootfs,
    )
    # Same host, same caller privileges: same capabilities and device nodes.
    assert ours == theirs
