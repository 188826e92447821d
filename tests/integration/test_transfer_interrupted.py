"""Interrupted pulls: berthd killed mid-pull resumes its ingest; a client gone cancels.

The registry is an in-process fake on 127.0.0.1 serving one image whose big
layer trickles out slowly (with HTTP Range support), so a test can act while
bytes are in flight and see from the requests whether a download resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from berth import errdefs
from berth.client import Client
from tests.support.daemon import Berthd, env_with_src, running_berthd

pytestmark = pytest.mark.integration

REPO = "slow/image"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 64 * 1024


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class SlowRegistry:
    """Serves REPO:latest; blob bodies pause ``delay`` seconds per 64 KiB chunk."""

    def __init__(self, layer_size: int = 3 << 20) -> None:
        self.layer = os.urandom(layer_size)
        self.config = _canonical(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        )
        self.manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _sha(self.layer),
                        "size": len(self.layer),
                    }
                ],
            }
        )
        self.blobs = {_sha(self.layer): self.layer, _sha(self.config): self.config}
        self.delay = 0.05
        self.ranges: list[str] = []
        self.blob_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def ref(self) -> str:
        return f"{self.host}/{REPO}:latest"

    def start(self) -> SlowRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = self.path
                if path == "/v2/":
                    return self._send(200, b"{}", {"Content-Type": "application/json"})
                if path.startswith(f"/v2/{REPO}/manifests/"):
                    return self._send(
                        200,
                        reg.manifest,
                        {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": _sha(reg.manifest)},
                    )
                if path.startswith(f"/v2/{REPO}/blobs/"):
                    data = reg.blobs.get(path.rsplit("/", 1)[1])
                    if data is None:
                        return self._send(404, b"{}", {"Content-Type": "application/json"})
                    return self._blob(data)
                return self._send(404, b"{}", {"Content-Type": "application/json"})

            def _blob(self, data: bytes) -> None:
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    reg.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                reg.blob_requests += 1
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command != "GET":
                    return
                try:
                    for i in range(0, len(body), CHUNK):
                        self.wfile.write(body[i : i + CHUNK])
                        self.wfile.flush()
                        if len(data) > CHUNK:
                            time.sleep(reg.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return

        return Handler


@pytest.fixture
def slow_registry() -> Iterator[SlowRegistry]:
    reg = SlowRegistry().start()
    try:
        yield reg
    finally:
        reg.stop()


def _layer_key(reg: SlowRegistry) -> str:
    return f"layer-{_sha(reg.layer)}"


def _wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _pull_until_bytes(d: Berthd, reg: SlowRegistry) -> threading.Thread:
    """Start a pull in a thread; return once the layer has bytes on the daemon."""
    started = threading.Event()
    failures: list[BaseException] = []

    def on_progress(p: Any) -> None:
        if p.key == _layer_key(reg) and p.offset >= 4 * CHUNK:
            started.set()

    def run() -> None:
        try:
            with Client(d.address) as c:
                c.pull(reg.ref, unpack=False, on_progress=on_progress)
        except errdefs.BerthError as exc:
            failures.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(20), "the pull never reported layer bytes"
    return t


def test_kill9_mid_pull_then_restart_resumes_and_leaves_no_orphans(
    slow_registry: SlowRegistry,
) -> None:
    with running_berthd() as d:
        t = _pull_until_bytes(d, slow_registry)
        d.kill9()
        t.join(10)
        d.start()
        with Client(d.address) as c:
            # The partial layer survived the crash as an ingest...
            active = {s.ref: s for s in c.content.active()}
            assert active[_layer_key(slow_registry)].offset >= 4 * CHUNK
            # ...and the next pull continues it with a Range request.
            slow_registry.delay = 0
            image = c.pull(slow_registry.ref, unpack=False)
            assert any(r != "bytes=0-" for r in slow_registry.ranges), slow_registry.ranges
            assert image.target.digest == _sha(slow_registry.manifest)
            assert c.images.check(image).complete
            # The dead pull's lease still holds its work until removed (or expired).
            stale = [le for le in c.leases.list() if "berth.io/transfer" in le.labels]
            assert len(stale) == 1
            c.leases.delete(stale[0].id, sync=True)
            # GC leaves exactly the image's blobs: nothing orphaned, nothing lost.
            want = {_sha(slow_registry.manifest), *slow_registry.blobs}
            assert {i.digest for i in c.content.list()} == want
            assert c.content.active() == []
        blob_dir = d.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
        on_disk = {"sha256:" + p.name for p in blob_dir.iterdir()}
        assert on_disk == want
        for digest in want:
            data = (blob_dir / digest.split(":")[1]).read_bytes()
            assert _sha(data) == digest


def test_client_killed_mid_pull_cancels_the_pull_in_the_daemon(
    berthd: Berthd, slow_registry: SlowRegistry
) -> None:
    cmd = [sys.executable, "-m", "berth.cli.main", "--address", berthd.address]
    cmd += ["images", "pull", "--no-unpack", "--format", "json", slow_registry.ref]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env_with_src())
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            update = json.loads(line)
            if update.get("key") == _layer_key(slow_registry) and update["offset"] > 0:
                break
        else:
            pytest.fail("the CLI never reported layer bytes")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with Client(berthd.address) as c:
        # The daemon notices, cancels the pull and drops its lease...
        _wait(
            lambda: not [le for le in c.leases.list() if "berth.io/transfer" in le.labels],
            what="the cancelled pull's lease to go",
        )
        # ...and stops downloading: the registry sees no new requests.
        served = slow_registry.blob_requests
        time.sleep(0.5)
        assert slow_registry.blob_requests == served
        with pytest.raises(errdefs.NotFound):
            c.images.get(slow_registry.ref)
        # The ingest is unlocked: a new pull takes it over and completes.
        slow_registry.delay = 0
        image = c.pull(slow_registry.ref, unpack=False)
        assert c.images.check(image).complete
    assert "Traceback" not in berthd.logs()
