"""berthd runs on uvloop, and on asyncio's own loop where uvloop is missing.

uvloop is a declared dependency, but the daemon must not depend on it for
correctness: the same code serves a container either way, and shims are
spawned without the loop's subprocess support (uvloop's would leave copies
of the shim's stdio pipes open in it, and its ``start`` would never finish).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-loop:1"
NO_UVLOOP = [
    sys.executable,
    "-c",
    "import sys; sys.modules['uvloop'] = None; from berth.daemon import main; sys.exit(main())",
]


class _AsyncioBerthd(Berthd):
    def argv(self) -> list[str]:
        return [*NO_UVLOOP, *super().argv()[3:]]


def _run_hello(d: Berthd, busybox_image: Image, tmp: Path, runtime: str, cid: str) -> str:
    layout = write_oci_layout(tmp / "busybox.tar", busybox_image, image_name=IMAGE)
    d.ctr("images", "import", str(layout))
    return d.ctr("run", "--rm", "--runtime", runtime, IMAGE, cid, "echo", "hello").stdout


@pytest.mark.parametrize("runtime", ["io.containerd.runc.v2", "io.containerd.berth.v2"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_container_runs_on_either_loop(busybox_image: Image, loop: str, runtime: str) -> None:
    base = short_tmpdir()
    d = (Berthd if loop == "uvloop" else _AsyncioBerthd)(base)
    try:
        d.start()
        assert f"loop={loop}" in d.logs()
        cid = f"loop-{loop}-{runtime.split('.')[-2]}-{os.urandom(4).hex()}"
        assert _run_hello(d, busybox_image, base, runtime, cid) == "hello\n"
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
