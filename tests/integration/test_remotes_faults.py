"""The registry client against a misbehaving registry: an in-process fake on 127.0.0.1.

The fake (an ``http.server`` thread) serves one small image and can be told
to lie about bytes, drop connections, fail with 500, serve non-JSON or huge
manifests, or demand Basic or Bearer authentication with a token endpoint of
its own. Every test checks the error the client raises and that nothing
corrupt was committed to the content store.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from berth import errdefs
from berth.core.content import LocalStore, MemoryLabelStore
from berth.core.images import mediatypes as mt
from berth.core.remotes import (
    Progress,
    RegistryUnavailable,
    Resolver,
    RetryPolicy,
    StoreLabeler,
    Unauthorized,
    pull,
    static_credentials,
)

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
REPO = "fake/image"
USER, PASSWORD = "alice", "pa55-w0rd-never-logged"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class FakeImage:
    layer: bytes
    config: bytes
    manifest: bytes
    manifest_type: str = mt.OCI_MANIFEST

    @classmethod
    def build(cls, layer_size: int = 300_000) -> FakeImage:
        # Incompressible content, so the gzip layer is about layer_size bytes.
        blocks, h = [], b"seed"
        for _ in range(layer_size // 32):
            h = hashlib.sha256(h).digest()
            blocks.append(h)
        payload = b"".join(blocks)
        layer = gzip.compress(payload, mtime=0)
        config = canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha(payload)]},
            }
        )
        manifest = canonical(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                "layers": [
                    {"mediaType": mt.OCI_LAYER_GZIP, "digest": sha(layer), "size": len(layer)}
                ],
            }
        )
        return cls(layer, config, manifest)

    @property
    def digest(self) -> str:
        return sha(self.manifest)


@dataclass
class Behaviour:
    """Knobs of the fake, changeable between requests."""

    fail_500: dict[str, int] = field(default_factory=dict)  # path -> remaining 500s
    truncate: dict[str, int] = field(default_factory=dict)  # path -> remaining truncations
    corrupt: set[str] = field(default_factory=set)  # paths served with a flipped byte
    extra_bytes: set[str] = field(default_factory=set)  # paths served with trailing junk
    content_type: dict[str, str] = field(default_factory=dict)  # path -> Content-Type
    auth: str = ""  # "", "basic" or "bearer"
    no_range: bool = False


class FakeRegistry:
    def __init__(self, image: FakeImage) -> None:
        self.image = image
        self.behaviour = Behaviour()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.tokens_issued: list[str] = []
        self.manifests: dict[str, tuple[bytes, str]] = {
            "latest": (image.manifest, image.manifest_type),
            image.digest: (image.manifest, image.manifest_type),
        }
        self.blobs: dict[str, bytes] = {
            sha(image.layer): image.layer,
            sha(image.config): image.config,
        }
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def ref(self, obj: str = "latest") -> str:
        sep = "@" if obj.startswith("sha256:") or ":" in obj else ":"
        return f"{self.host}/{REPO}{sep}{obj}"

    def start(self) -> FakeRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hits(self, method: str, fragment: str) -> list[dict[str, str]]:
        return [h for m, p, h in self.requests if m == method and fragment in p]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: dict[str, str] | None = None,
                head: bool = False,
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                mode = fake.behaviour.auth
                given = self.headers.get("Authorization", "")
                if mode == "basic":
                    want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                    if given == want:
                        return True
                    self._send(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
                    return False
                if mode == "bearer":
                    if given.startswith("Bearer ") and given[7:] in fake.tokens_issued:
                        return True
                    realm = f"http://{fake.host}/token"
                    self._send(
                        401,
                        b"",
                        {
                            "WWW-Authenticate": f'Bearer realm="{realm}",service="fake-registry",'
                            f'scope="repository:{REPO}:pull"'
                        },
                    )
                    return False
                return True

            def _token(self) -> None:
                want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization", "") != want:
                    self._send(401, b'{"details":"bad credentials"}')
                    return
                token = f"tok-{len(fake.tokens_issued)}-secret"
                fake.tokens_issued.append(token)
                self._send(
                    200,
                    json.dumps({"token": token, "expires_in": 300}).encode(),
                    {"Content-Type": "application/json"},
                )

            def _serve(self, head: bool) -> None:
                path = self.path
                fake.requests.append((self.command, path, dict(self.headers.items())))
                if path.startswith("/token"):
                    self._token()
                    return
                if path in ("/v2/", "/v2"):
                    self._send(200, b"{}")
                    return
                if not self._authorized():
                    return
                b = fake.behaviour
                if b.fail_500.get(path, 0) > 0:
                    b.fail_500[path] -= 1
                    self._send(
                        500,
                        b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}',
                        {"Content-Type": "application/json"},
                        head,
                    )
                    return
                prefix = f"/v2/{REPO}/"
                if not path.startswith(prefix):
                    self._send(404, head=head)
                    return
                kind, _, name = path[len(prefix) :].partition("/")
                name = name.split("?", 1)[0]
                if kind == "manifests" and name in fake.manifests:
                    body, ctype = fake.manifests[name]
                    digest = sha(body)
                elif kind == "blobs" and name in fake.blobs:
                    body, ctype, digest = fake.blobs[name], "application/octet-stream", name
                else:
                    self._send(
                        404,
                        b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}',
                        {"Content-Type": "application/json"},
                        head,
                    )
                    return
                ctype = b.content_type.get(path, ctype)
                if path in b.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if path in b.extra_bytes:
                    body = body + b"junk"
                headers = {"Content-Type": ctype, "Docker-Content-Digest": digest}
                start = 0
                rng = self.headers.get("Range")
                if rng and not b.no_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    status = 206
                else:
                    status = 200
                part = body[start:]
                headers["Content-Length"] = str(len(part))
                if not head and b.truncate.get(path, 0) > 0:
                    b.truncate[path] -= 1
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(part[: len(part) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    # Abort the connection mid-body.
                    self.connection.shutdown(2)
                    return
                self._send(status, part, headers, head)

        return Handler


@pytest.fixture
def image() -> FakeImage:
    return FakeImage.build()


@pytest.fixture
def fake(image: FakeImage) -> Iterator[FakeRegistry]:
    reg = FakeRegistry(image).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "content", MemoryLabelStore())


def run(coro_fn: Callable[[Resolver], Any], **resolver_kwargs: Any) -> Any:
    async def main() -> Any:
        async with Resolver(retry=FAST_RETRY, **resolver_kwargs) as resolver:
            return await coro_fn(resolver)

    return asyncio.run(main())


def committed(store: LocalStore) -> set[str]:
    out: set[str] = set()
    store.walk(lambda info: out.add(str(info.digest)))
    return out


def blob_path(image: FakeImage, which: str) -> str:
    data = {"layer": image.layer, "config": image.config}[which]
    return f"/v2/{REPO}/blobs/{sha(data)}"


def test_clean_pull_commits_every_blob(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    result = run(lambda r: pull(r, fake.ref(), store, labeler=StoreLabeler(store)))
    assert str(result.target.digest) == image.digest
    assert committed(store) == {image.digest, sha(image.layer), sha(image.config)}
    assert store.list_statuses() == []


def test_corrupt_blob_is_refused_and_nothing_is_committed(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    fake.behaviour.corrupt.add(blob_path(image, "layer"))
    with pytest.raises(
        errdefs.FailedPrecondition, match=r"failed verification.*unexpected commit digest"
    ):
        run(lambda r: pull(r, fake.ref(), store))
    assert sha(image.layer) not in committed(store)
    assert store.list_statuses() == []  # the bad bytes are not kept for a resume


def test_wrong_size_from_registry_is_refused(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    fake.behaviour.extra_bytes.add(blob_path(image, "config"))
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit size"):
        run(lambda r: pull(r, fake.ref(), store))
    assert sha(image.config) not in committed(store)
    assert store.list_statuses() == []


def test_corrupt_manifest_is_refused_before_commit(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    fake.behaviour.corrupt.add(f"/v2/{REPO}/manifests/{image.digest}")
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected digest"):
        run(lambda r: pull(r, fake.ref(), store))
    assert committed(store) == set()


def test_truncated_download_resumes_with_range(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    path = blob_path(image, "layer")
    fake.behaviour.truncate[path] = 1
    run(lambda r: pull(r, fake.ref(), store))
    gets = fake.hits("GET", path)
    assert len(gets) == 2
    assert "Range" not in gets[0]
    start = int(gets[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start < len(image.layer)
    assert store.read_blob(sha(image.layer)) == image.layer


def test_resume_when_registry_ignores_range(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    path = blob_path(image, "layer")
    fake.behaviour.truncate[path] = 1
    fake.behaviour.no_range = True
    run(lambda r: pull(r, fake.ref(), store))
    assert store.read_blob(sha(image.layer)) == image.layer


def test_server_error_is_retried_then_succeeds(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    path = blob_path(image, "layer")
    fake.behaviour.fail_500[path] = 2
    run(lambda r: pull(r, fake.ref(), store))
    assert len(fake.hits("GET", path)) == 3
    assert sha(image.layer) in committed(store)


def test_persistent_server_error_gives_up(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    path = blob_path(image, "layer")
    fake.behaviour.fail_500[path] = 100
    with pytest.raises(RegistryUnavailable, match=r"500 .*boom.* after 4 attempts"):
        run(lambda r: pull(r, fake.ref(), store))
    assert len(fake.hits("GET", path)) == FAST_RETRY.attempts
    assert sha(image.layer) not in committed(store)


def test_interrupted_pull_leaves_an_ingest_that_a_rerun_resumes(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    path = blob_path(image, "layer")
    fake.behaviour.truncate[path] = 100  # every attempt breaks after a third
    fake.behaviour.no_range = False
    with pytest.raises(RegistryUnavailable, match="gave up"):
        run(lambda r: pull(r, fake.ref(), store))
    statuses = store.list_statuses()
    assert len(statuses) == 1 and statuses[0].ref == f"layer-{sha(image.layer)}"
    kept = statuses[0].offset
    assert 0 < kept < len(image.layer)
    assert sha(image.layer) not in committed(store)

    fake.behaviour.truncate.clear()
    fake.requests.clear()
    run(lambda r: pull(r, fake.ref(), store))
    (get,) = fake.hits("GET", path)
    assert get["Range"] == f"bytes={kept}-"
    assert store.read_blob(sha(image.layer)) == image.layer
    assert store.list_statuses() == []


def _serve_manifest(fake: FakeRegistry, body: bytes, media_type: str) -> None:
    fake.manifests["latest"] = (body, media_type)
    fake.manifests[sha(body)] = (body, media_type)


def test_manifest_that_is_not_json(fake: FakeRegistry, store: LocalStore) -> None:
    _serve_manifest(fake, b"<html>definitely not a manifest</html>", mt.OCI_MANIFEST)
    with pytest.raises(errdefs.InvalidArgument, match="is not valid JSON"):
        run(lambda r: pull(r, fake.ref(), store))
    assert committed(store) == set()


def test_unknown_media_type(fake: FakeRegistry, image: FakeImage, store: LocalStore) -> None:
    body = b'{"schemaVersion":2,"stuff":[]}'
    _serve_manifest(fake, body, "application/vnd.example.unknown+json")
    with pytest.raises(
        errdefs.InvalidArgument, match=r"unsupported media type 'application/vnd.example.unknown"
    ):
        run(lambda r: pull(r, fake.ref(), store))
    assert committed(store) == set()


def test_manifest_over_the_size_limit(fake: FakeRegistry, store: LocalStore) -> None:
    body = canonical({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "pad": "x" * (5 << 20)})
    _serve_manifest(fake, body, mt.OCI_MANIFEST)
    with pytest.raises(errdefs.InvalidArgument, match=r"rejecting \d+ byte manifest .*limit"):
        run(lambda r: pull(r, fake.ref(), store))
    assert committed(store) == set()


def test_layer_digest_with_unsupported_algorithm(
    fake: FakeRegistry, image: FakeImage, store: LocalStore
) -> None:
    doc = json.loads(image.manifest)
    doc["layers"][0]["digest"] = "md5:" + "0" * 32
    _serve_manifest(fake, canonical(doc), mt.OCI_MANIFEST)
    with pytest.raises(errdefs.InvalidArgument, match="unsupported digest algorithm 'md5'"):
        run(lambda r: pull(r, fake.ref(), store))
    assert committed(store) == set()


def test_reference_digest_with_unsupported_algorithm(fake: FakeRegistry, store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="unsupported digest algorithm 'md5'"):
        run(lambda r: pull(r, f"{fake.host}/{REPO}@md5:{'0' * 32}", store))
    assert fake.requests == []


def test_unknown_tag_is_not_found(fake: FakeRegistry, store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound, match=f"{fake.host}/{REPO}:nope: not found"):
        run(lambda r: pull(r, fake.ref("nope"), store))


def test_auth_needed_but_no_credentials(fake: FakeRegistry, store: LocalStore) -> None:
    fake.behaviour.auth = "basic"
    with pytest.raises(Unauthorized) as info:
        run(lambda r: pull(r, fake.ref(), store))
    message = str(info.value)
    assert fake.host in message
    assert "requires authentication" in message and "credentials" in message
    assert committed(store) == set()


def test_wrong_basic_credentials_are_reported(fake: FakeRegistry, store: LocalStore) -> None:
    fake.behaviour.auth = "basic"
    creds = static_credentials(fake.host, USER, "wrong-password")
    with pytest.raises(Unauthorized, match=f"{fake.host} refused user 'alice'") as info:
        run(lambda r: pull(r, fake.ref(), store), credentials=creds)
    assert "wrong-password" not in str(info.value)


def test_bearer_token_flow_and_no_secret_in_logs(
    fake: FakeRegistry, image: FakeImage, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    fake.behaviour.auth = "bearer"
    caplog.set_level(logging.DEBUG)
    progress: list[Progress] = []
    creds = static_credentials(fake.host, USER, PASSWORD)
    run(lambda r: pull(r, fake.ref(), store, progress=progress.append), credentials=creds)
    assert committed(store) == {image.digest, sha(image.layer), sha(image.config)}
    # One token for the repository scope, reused by every request.
    assert len(fake.tokens_issued) == 1
    (token_req,) = fake.hits("GET", "/token")
    assert "scope=repository%3Afake%2Fimage%3Apull" in next(
        p for m, p, _ in fake.requests if p.startswith("/token")
    )
    assert token_req["Authorization"].startswith("Basic ")
    authed = [h for m, p, h in fake.requests if p.startswith(f"/v2/{REPO}/blobs/")]
    assert authed and all(
        h.get("Authorization") == f"Bearer {fake.tokens_issued[0]}" for h in authed
    )
    # Neither the password, its base64 form, nor the token reach the logs.
    text = caplog.text
    assert text  # debug logging was on
    secret_b64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, secret_b64, fake.tokens_issued[0]):
        assert secret not in text
    assert any(p.status == "done" for p in progress)


def test_bearer_without_credentials_asks_for_them(fake: FakeRegistry, store: LocalStore) -> None:
    fake.behaviour.auth = "bearer"
    with pytest.raises(Unauthorized, match="requires authentication"):
        run(lambda r: pull(r, fake.ref(), store))
