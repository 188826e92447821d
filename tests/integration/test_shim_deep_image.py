"""Running an image with more layers than fit in one overlay mount's options.

The kernel copies mount(2)'s option string into a single page, so an overlay
with a hundred absolute lowerdirs needs its lowerdirs rewritten relative to a
common parent (``berth.core.mount``'s compaction). Both shims mount the rootfs
themselves, so each must do it: this drives Debian's ``ctr run`` through berthd
with Berth's shim and, as the reference, with containerd's Go shim.
"""

from __future__ import annotations

import os
import time

import pytest

from berth.core import mount as mountmod
from berth.core import mountutil
from tests.support.daemon import Berthd
from tests.support.imagebuilder import (
    File,
    Image,
    Layer,
    LayerSpec,
    build_image,
    write_oci_layout,
)

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-deep:1"
MIDDLE_LAYERS = 100
TASK_STATE = "io.containerd.runtime.v2.task"
RUNTIMES = [
    pytest.param("io.containerd.berth.v2", id="berth-shim"),
    pytest.param("io.containerd.runc.v2", id="runc-shim"),
]


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    """The shared daemon with a busybox-based image of 102 layers imported."""
    layers: list[LayerSpec | Layer] = [busybox_image.layers[0]]
    layers += [
        LayerSpec([File(f"layers/{i:03d}", f"{i}\n".encode())]) for i in range(MIDDLE_LAYERS)
    ]
    # The top layer also overrides a middle layer's file, so reading it shows
    # the layers are stacked in order and not merely all present.
    layers.append(LayerSpec([File("top", b"top\n"), File("layers/000", b"replaced\n")]))
    image = build_image(layers)
    layout = write_oci_layout(shared_berthd.base / "deep.tar", image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout), timeout=300)
    return shared_berthd


def test_image_needs_lowerdir_compaction(d: Berthd) -> None:
    # Every lowerdir is at least this long, so the plain option string cannot
    # fit in a page: the tests below exercise the compacted path.
    shortest = d.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "1" / "fs"
    assert (len(str(shortest)) + 1) * (MIDDLE_LAYERS + 2) > mountmod.PAGE_SIZE


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_reads_top_middle_and_bottom_layers(d: Berthd, runtime: str) -> None:
    id = f"deep-{runtime.split('.')[-2]}"
    res = d.ctr(
        "run", "--rm", "--runtime", runtime, IMAGE, id,
        "cat", "/top", "/layers/000", "/layers/099", "/etc/hostname",
    )  # fmt: skip
    assert res.stdout == "top\nreplaced\n99\nberth-test\n", res.stderr
    bundle = d.state / TASK_STATE / "default" / id
    assert not bundle.exists()
    assert mountutil.mount_points(bundle) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_detached_task_on_deep_image_execs_and_unmounts(d: Berthd, runtime: str) -> None:
    id = f"deepd-{runtime.split('.')[-2]}"
    bundle = d.state / TASK_STATE / "default" / id
    d.ctr("run", "-d", "--runtime", runtime, IMAGE, id, "sleep", "1000")
    try:
        assert mountutil.mount_points(bundle / "rootfs") == [str(bundle / "rootfs")]
        listing = d.ctr("tasks", "exec", "--exec-id", "ls", id, "ls", "/layers").stdout.split()
        assert len(listing) == MIDDLE_LAYERS
    finally:
        d.ctr("tasks", "kill", "--signal", "SIGKILL", id, check=False)
        _wait_stopped(d, id)
        d.ctr("tasks", "rm", id, check=False)
        d.ctr("containers", "rm", id, check=False)
    assert mountutil.mount_points(bundle) == []
    assert not os.path.exists(bundle)


def _wait_stopped(d: Berthd, id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == id and fields[2] != "RUNNING":
                return
        time.sleep(0.05)
    raise AssertionError(f"task {id} still running: {d.ctr('tasks', 'ls').stdout}")
