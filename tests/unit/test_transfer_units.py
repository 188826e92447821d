"""The transfer service's parts without a network: the store adapter, the lease
bookkeeping, progress batching and cancellation, and the CLI's helpers."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from berth import errdefs
from berth.cli import _progress
from berth.client import AsyncContent, AsyncImages, Content, Images, _core
from berth.client.types import BlobCheck, Descriptor, Image, ImageCheck, TransferProgress
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import LocalStore, copy_into
from berth.core.content.errors import OutOfRange
from berth.core.metadata.leases import LeaseStore
from berth.core.metadata.plugin import Metadata
from berth.core.transfer import LeasedContent, MetadataLabeler, PullOptions, Transfers, Update
from berth.services.transfer import _Batch, _progress_of

DATA = b"some layer bytes" * 100
DGST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    m = Metadata(tmp_path / "meta.db", LocalStore(tmp_path / "content"))
    yield m
    m.close()


def _desc(data: bytes = DATA) -> ContentDescriptor:
    from berth.core.content import Digest

    return ContentDescriptor(
        "application/vnd.oci.image.layer.v1.tar",
        Digest.parse("sha256:" + hashlib.sha256(data).hexdigest()),
        len(data),
    )


# --- the store adapter -----------------------------------------------------------------


def test_leased_content_commits_under_the_lease(md: Metadata) -> None:
    LeaseStore(md).create("ns", "l1", {})
    store = LeasedContent(md.require_content(), "ns", "l1")
    assert copy_into(store, "layer-x", io.BytesIO(DATA), _desc()) is True
    assert store.read_blob(DGST) == DATA
    assert store.read_blob(DGST, 4, 4) == DATA[4:8]
    assert ("content", DGST) in LeaseStore(md).list_resources("ns", "l1")
    # Present already: nothing is written, and the content is held again.
    assert copy_into(store, "layer-x", io.BytesIO(DATA), _desc()) is False
    with pytest.raises(OutOfRange):
        store.read_blob(DGST, len(DATA) + 1)


def test_leased_content_lookup_holds_existing_content(md: Metadata) -> None:
    plain = LeasedContent(md.require_content(), "ns", None)
    copy_into(plain, "r", io.BytesIO(DATA), _desc())
    LeaseStore(md).create("ns", "pull", {})
    leased = LeasedContent(md.require_content(), "ns", "pull")
    assert leased.info(DGST).size == len(DATA)
    # Found present by a pull: the pull's lease now protects it from GC.
    assert ("content", DGST) in LeaseStore(md).list_resources("ns", "pull")


def test_leased_content_is_namespaced(md: Metadata) -> None:
    copy_into(LeasedContent(md.require_content(), "a", None), "r", io.BytesIO(DATA), _desc())
    with pytest.raises(errdefs.NotFound):
        LeasedContent(md.require_content(), "b", None).info(DGST)


def test_labeler_merges_and_deletes_labels(md: Metadata) -> None:
    store = LeasedContent(md.require_content(), "ns", None)
    copy_into(store, "r", io.BytesIO(DATA), _desc())
    labeler = MetadataLabeler(md.require_content(), "ns")
    d = _desc().digest

    async def go() -> dict[str, str]:
        await labeler.update(d, {"a": "1", "b": "2"})
        await labeler.update(d, {"a": ""})
        return await labeler.labels(d)

    assert asyncio.run(go()) == {"b": "2"}


# --- Transfers, before any network ---------------------------------------------------------


def test_pull_refuses_conflicting_options_without_leaving_a_lease(md: Metadata) -> None:
    t = Transfers(md)

    async def go(opts: PullOptions) -> None:
        await t.pull("ns", opts)

    with pytest.raises(errdefs.InvalidArgument, match="mutually exclusive"):
        asyncio.run(
            go(PullOptions("127.0.0.1:1/x:1", platforms=("linux/arm64",), all_platforms=True))
        )
    with pytest.raises(errdefs.InvalidArgument):
        asyncio.run(go(PullOptions("Not A Reference")))
    with pytest.raises(errdefs.InvalidArgument):
        asyncio.run(go(PullOptions("127.0.0.1:1/x:1", platforms=("no/such/plat/form/x",))))
    assert LeaseStore(md).list("ns") == []


def test_failed_pull_deletes_its_lease(md: Metadata) -> None:
    # Port 1 on loopback refuses connections: the pull fails after its lease exists.
    t = Transfers(md)
    with pytest.raises(errdefs.BerthError):
        asyncio.run(t.pull("ns", PullOptions("127.0.0.1:1/x:1", unpack=False)))
    assert LeaseStore(md).list("ns") == []


def test_registry_options_hide_the_secret() -> None:
    from berth.core.transfer import RegistryOptions

    assert "hunter2" not in repr(RegistryOptions(username="u", secret="hunter2"))


# --- progress batching and cancellation ---------------------------------------------------


def _update(key: str, offset: int) -> Update:
    return Update(key, "sha256:x", "m", "downloading", offset, 100)


def test_batch_keeps_only_the_latest_update_per_blob() -> None:
    async def go() -> list[tuple[str, int]]:
        batch = _Batch()
        batch(_update("a", 1))
        batch(_update("a", 50))
        batch(_update("b", 7))
        assert batch.changed.is_set()
        taken = [(b.key, b.offset) for b in batch.take()]
        assert not batch.changed.is_set() and batch.take() == []
        return taken

    assert asyncio.run(go()) == [("a", 50), ("b", 7)]


def test_progress_stream_yields_batches_then_the_result() -> None:
    async def go() -> tuple[list[list[str]], list[str]]:
        batch = _Batch()

        async def work() -> str:
            for i in range(3):
                batch(_update(f"k{i}", i))
                await asyncio.sleep(0.15)
            return "result"

        box: list[str] = []
        seen = [[b.key for b in blobs] async for blobs in _progress_of(work(), batch, box)]
        return seen, box

    seen, box = asyncio.run(go())
    assert box == ["result"]
    assert [k for keys in seen for k in keys] == ["k0", "k1", "k2"]


def test_progress_stream_closed_early_cancels_the_work() -> None:
    async def go() -> bool:
        batch = _Batch()
        cancelled = asyncio.Event()

        async def work() -> None:
            try:
                while True:
                    batch(_update("k", 1))
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        stream = _progress_of(work(), batch, [])
        await anext(stream)
        await stream.aclose()  # what gRPC does when the client goes away
        return cancelled.is_set()

    assert asyncio.run(go()) is True


def test_progress_stream_raises_what_the_work_raised() -> None:
    async def go() -> None:
        async def work() -> None:
            raise errdefs.NotFound("no such tag")

        async for _ in _progress_of(work(), _Batch(), []):
            pass

    with pytest.raises(errdefs.NotFound, match="no such tag"):
        asyncio.run(go())


# --- SDK and CLI helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"), [(Images, AsyncImages), (Content, AsyncContent)]
)
def test_images_and_content_twins_match(sync_cls: type, async_cls: type) -> None:
    public = {n for n in vars(sync_cls) if not n.startswith("_")}
    assert public == {n for n in vars(async_cls) if not n.startswith("_")}
    for name in public:
        s = inspect.signature(getattr(sync_cls, name))
        a = inspect.signature(getattr(async_cls, name))
        assert list(s.parameters.values()) == list(a.parameters.values()), name
        assert inspect.iscoroutinefunction(getattr(async_cls, name)), name


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        (None, None, ("", "")),
        ("bob", None, ("bob", "")),
        ("bob:s3:cret", None, ("bob", "s3:cret")),
        ("bob", "pw", ("bob", "pw")),
    ],
)
def test_split_user(user: str | None, password: str | None, expected: tuple[str, str]) -> None:
    assert _core.split_user(user, password) == expected


def test_cli_credentials_come_from_option_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_progress.PASSWORD_ENV, raising=False)
    assert _progress.credentials("bob:pw") == ("bob", "pw")
    monkeypatch.setenv(_progress.PASSWORD_ENV, "from-env")
    assert _progress.credentials("bob") == ("bob", "from-env")
    monkeypatch.delenv(_progress.PASSWORD_ENV)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(click.UsageError, match="BERTH_PASSWORD"):
        _progress.credentials("bob")


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1153433, "1.1 MiB")]
)
def test_human_bytes_matches_ctr(n: int, text: str) -> None:
    assert _progress.human_bytes(n) == text


def test_plain_lines_report_each_status_once(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress.progress_sink("lines", "pull x") as sink:
        for status, offset in [("downloading", 10), ("downloading", 20), ("done", 30)]:
            sink(TransferProgress("layer-sha256:ab", "sha256:ab", "m", status, offset, 30))
    assert capsys.readouterr().out.splitlines() == [
        "layer-sha256:ab: downloading 10 B/30 B",
        "layer-sha256:ab: done 30 B/30 B",
    ]


def test_image_check_counts_like_ctr() -> None:
    img = Image("x", Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:m", 1))
    check = ImageCheck(
        image=img,
        available=True,
        blobs=(
            BlobCheck("sha256:m", 1, "application/vnd.oci.image.manifest.v1+json", "ok"),
            BlobCheck("sha256:c", 2, "application/vnd.oci.image.config.v1+json", "ok"),
            BlobCheck(
                "sha256:l", 3, "application/vnd.oci.image.layer.v1.tar", "corrupt", "sha256:z"
            ),
        ),
    )
    assert check.status == "corrupt" and not check.complete
    assert [b.digest for b in check.required] == ["sha256:c", "sha256:l"]
    assert [b.digest for b in check.present] == ["sha256:c"]
