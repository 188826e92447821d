"""The SDK's Task and Process objects against a real berthd, blocking and
asyncio: the same lifecycle gives the same results through both."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
from typing import Any

import pytest

from berth import errdefs
from berth.client import AsyncClient, Client, cio
from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-sdk-tasks:1"
RUN = secrets.token_hex(3)
SCRIPT = "echo out; echo err >&2; cat; exit 3"


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


def _create(d: Berthd, cid: str, *args: str) -> None:
    d.ctr("containers", "create", "--", IMAGE, cid, *args)


def sync_lifecycle(d: Berthd, cid: str) -> dict[str, Any]:
    out, err = io.BytesIO(), io.BytesIO()
    with Client(d.address) as c:
        box = c.load_container(cid)
        task = box.new_task(io=cio.streams(io.BytesIO(b"typed\n"), out, err))
        fifo_dir = task.io.config.stdout.rsplit("/", 1)[0]
        exited = task.wait_in_background()
        pid = task.start()
        status = exited.result(30)
        state = task.status()
        deleted = task.delete()
        with pytest.raises(errdefs.NotFound):
            c.tasks.get(cid)
        box.delete(snapshot_cleanup=True)
    return {
        "pid": pid > 0,
        "code": status.code,
        "state": state.status,
        "deleted": deleted.code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "fifos_gone": not os.path.exists(fifo_dir),
    }


async def async_lifecycle(d: Berthd, cid: str) -> dict[str, Any]:
    out, err = io.BytesIO(), io.BytesIO()
    async with AsyncClient(d.address) as c:
        box = await c.load_container(cid)
        task = await box.new_task(io=cio.streams(io.BytesIO(b"typed\n"), out, err))
        fifo_dir = task.io.config.stdout.rsplit("/", 1)[0]
        exited = task.wait_in_background()
        pid = await task.start()
        status = await asyncio.wait_for(exited, 30)
        state = await task.status()
        deleted = await task.delete()
        with pytest.raises(errdefs.NotFound):
            await c.tasks.get(cid)
        await box.delete(snapshot_cleanup=True)
    return {
        "pid": pid > 0,
        "code": status.code,
        "state": state.status,
        "deleted": deleted.code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "fifos_gone": not os.path.exists(fifo_dir),
    }


def test_sync_and_async_lifecycles_agree(d: Berthd) -> None:
    _create(d, f"sync-{RUN}", "sh", "-c", SCRIPT)
    _create(d, f"async-{RUN}", "sh", "-c", SCRIPT)
    got_sync = sync_lifecycle(d, f"sync-{RUN}")
    got_async = asyncio.run(async_lifecycle(d, f"async-{RUN}"))
    expected = {
        "pid": True,
        "code": 3,
        "state": "stopped",
        "deleted": 3,
        "out": b"out\ntyped\n",
        "err": b"err\n",
        "fifos_gone": True,
    }
    assert got_sync == expected
    assert got_async == expected
    assert f"sync-{RUN}" not in d.ctr("snapshots", "ls").stdout


def test_exec_pause_kill_and_forced_delete(d: Berthd) -> None:
    cid = f"exec-{RUN}"
    _create(d, cid, "sleep", "60")
    with Client(d.address) as c:
        box = c.load_container(cid)
        task = box.new_task()
        task.start()
        out = io.BytesIO()
        proc = task.exec("e1", ["sh", "-c", "echo in-exec; exit 6"], io=cio.streams(None, out))
        exited = proc.wait_in_background()
        proc.start()
        assert exited.result(30).code == 6
        assert proc.delete().code == 6
        assert out.getvalue() == b"in-exec\n"
        assert task.pids()
        assert task.metrics().stats
        task.pause()
        assert task.status().status == "paused"
        task.resume()
        with pytest.raises(errdefs.FailedPrecondition, match="must be stopped before deletion"):
            task.delete()
        with pytest.raises(errdefs.InvalidArgument, match="unknown signal"):
            task.kill("SIGNOPE")
        assert task.delete(force=True).code == 137
        box.delete(snapshot_cleanup=True)


def test_log_file_io_is_written_by_the_shim(d: Berthd) -> None:
    cid = f"logfile-{RUN}"
    _create(d, cid, "sh", "-c", "echo to-the-log")
    log = d.base / f"{cid}.log"
    with Client(d.address) as c:
        box = c.load_container(cid)
        task = box.new_task(io=cio.log_file(log))
        assert task.io.config.stdout == f"file://{log}"
        exited = task.wait_in_background()
        task.start()
        assert exited.result(30).code == 0
        task.delete()
        box.delete(snapshot_cleanup=True)
    assert log.read_text() == "to-the-log\n"


def test_a_second_task_is_already_exists(d: Berthd) -> None:
    cid = f"twice-{RUN}"
    _create(d, cid, "sleep", "60")
    with Client(d.address) as c:
        box = c.load_container(cid)
        task = box.new_task()
        try:
            with pytest.raises(errdefs.AlreadyExists):
                box.new_task(io=cio.streams(None, io.BytesIO()))
            with pytest.raises(errdefs.FailedPrecondition, match="cannot delete running task"):
                box.delete()
        finally:
            task.delete(force=True)
            box.delete(snapshot_cleanup=True)
