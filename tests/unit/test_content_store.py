"""Unit tests for berth.core.content: digests, LocalStore, writers and copy_into."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth import errdefs
from berth.core.content import (
    Algorithm,
    Descriptor,
    Digest,
    Info,
    LocalStore,
    MemoryLabelStore,
    OutOfRange,
    ShortRead,
    Status,
    Store,
    Writer,
    copy_into,
    parse_digest,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def sha256(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


def sha512(data: bytes) -> Digest:
    return Digest.parse("sha512:" + hashlib.sha512(data).hexdigest())


def desc(data: bytes, alg: Algorithm = Algorithm.SHA256) -> Descriptor:
    return Descriptor("application/octet-stream", Digest.from_bytes(data, alg), len(data))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "content")


def put(store: LocalStore, ref: str, data: bytes) -> Digest:
    with store.open_writer(ref, total=len(data), expected=sha256(data)) as w:
        w.write(data)
        return w.commit(len(data), sha256(data))


# ---------------------------------------------------------------------------
# Digest parsing

VALID256 = "sha256:" + "a" * 64


def test_digest_parse_valid_and_roundtrip() -> None:
    d = parse_digest(VALID256)
    assert d.algorithm is Algorithm.SHA256
    assert d.hex == "a" * 64
    assert str(d) == VALID256
    assert Digest.parse(d) is d
    d512 = Digest.parse("sha512:" + "0" * 128)
    assert d512.algorithm is Algorithm.SHA512


def test_digest_from_bytes_matches_hashlib() -> None:
    assert str(Digest.from_bytes(b"hello")) == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    got = Digest.from_bytes(b"hello", Algorithm.SHA512)
    assert str(got) == "sha512:" + hashlib.sha512(b"hello").hexdigest()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("sha256", "expected <algorithm>:<hex>"),
        ("sha256:", "expected <algorithm>:<hex>"),
        (":" + "a" * 64, "expected <algorithm>:<hex>"),
        ("SHA256:" + "a" * 64, "expected <algorithm>:<hex>"),
        ("md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
        ("sha384:" + "a" * 96, "unsupported digest algorithm"),
        ("sha256:" + "a" * 63, "needs 64 hex characters, got 63"),
        ("sha512:" + "a" * 64, "needs 128 hex characters, got 64"),
        ("sha256:" + "A" * 64, "lowercase hexadecimal"),
        ("sha256:" + "g" * 64, "lowercase hexadecimal"),
        ("sha256:" + "a" * 64 + " ", "expected <algorithm>:<hex>"),
    ],
)
def test_digest_parse_rejects(value: str, fragment: str) -> None:
    with pytest.raises(errdefs.InvalidArgument) as exc:
        Digest.parse(value)
    assert fragment in str(exc.value)


def test_digest_parse_rejects_non_string() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="expected a string"):
        Digest.parse(42)  # type: ignore[arg-type]


@given(st.sampled_from(list(Algorithm)), st.binary())
def test_digest_roundtrip_property(alg: Algorithm, data: bytes) -> None:
    d = Digest.from_bytes(data, alg)
    assert Digest.parse(str(d)) == d
    assert len(d.hex) == alg.hex_length


@given(st.text())
def test_digest_parse_never_fails_unexpectedly(value: str) -> None:
    # Arbitrary input either parses to a digest that prints back identically
    # or is rejected with InvalidArgument, never anything else.
    try:
        d = Digest.parse(value)
    except errdefs.InvalidArgument:
        return
    assert str(d) == value


@given(
    st.sampled_from(list(Algorithm)),
    st.text(alphabet="0123456789abcdef", max_size=200),
)
def test_digest_length_is_enforced(alg: Algorithm, hexpart: str) -> None:
    value = f"{alg.value}:{hexpart}"
    if len(hexpart) == alg.hex_length:
        assert str(Digest.parse(value)) == value
    else:
        with pytest.raises(errdefs.InvalidArgument):
            Digest.parse(value)


# ---------------------------------------------------------------------------
# Blobs


def test_local_store_satisfies_protocols(store: LocalStore) -> None:
    assert isinstance(store, Store)
    with store.open_writer("proto") as w:
        assert isinstance(w, Writer)


def test_write_commit_read_info_delete(store: LocalStore) -> None:
    data = b"hello, berth" * 1000
    before = datetime.now(UTC)
    d = put(store, "ref-1", data)
    assert d == sha256(data)

    blob = Path(store.root) / "blobs" / "sha256" / d.hex
    assert blob.read_bytes() == data
    # Committed blobs are read-only and nothing is left in ingest/.
    assert stat.S_IMODE(blob.stat().st_mode) & 0o222 == 0
    assert os.listdir(Path(store.root) / "ingest") == []

    info = store.info(d)
    assert info.digest == d
    assert info.size == len(data)
    assert info.labels == {}
    assert info.created_at >= before.replace(microsecond=0)
    assert store.info(str(d)) == info

    assert store.read_blob(d) == data
    store.delete(d)
    with pytest.raises(errdefs.NotFound, match="not found"):
        store.info(d)
    with pytest.raises(errdefs.NotFound):
        store.delete(d)
    with pytest.raises(errdefs.NotFound):
        store.read_blob(d)


def test_commit_without_expectations(store: LocalStore) -> None:
    with store.open_writer("free") as w:
        w.write(b"abc")
        w.write(bytearray(b"def"))
        w.write(memoryview(b"ghi"))
        assert w.digest() == sha256(b"abcdefghi")
        d = w.commit()
    assert d == sha256(b"abcdefghi")
    assert store.read_blob(d) == b"abcdefghi"


def test_empty_blob(store: LocalStore) -> None:
    d = put(store, "empty", b"")
    assert store.info(d).size == 0
    assert store.read_blob(d) == b""


def test_malformed_digest_arguments(store: LocalStore) -> None:
    for call in (store.info, store.delete, store.read_blob, store.reader_at):
        with pytest.raises(errdefs.InvalidArgument):
            call("sha256:nothex")
    with pytest.raises(errdefs.InvalidArgument, match="unsupported digest algorithm"):
        store.open_writer("r", expected="md5:" + "0" * 32)


def test_read_at_offset_and_size(store: LocalStore) -> None:
    data = bytes(range(256)) * 10
    d = put(store, "r", data)
    assert store.read_blob(d, 10) == data[10:]
    assert store.read_blob(d, 10, 5) == data[10:15]
    assert store.read_blob(d, 0, 0) == b""
    assert store.read_blob(d, len(data) - 3, 100) == data[-3:]  # clipped
    assert store.read_blob(d, len(data)) == b""
    with pytest.raises(OutOfRange, match="read past object length"):
        store.read_blob(d, len(data) + 1)
    with pytest.raises(errdefs.InvalidArgument):
        store.read_blob(d, -1)
    assert errdefs.code_of(OutOfRange("x")) == 11

    with store.reader_at(Descriptor("x", d, len(data))) as ra:
        assert ra.size == len(data)
        assert ra.read_at(100, 50) == data[100:150]
        assert ra.read_at(len(data) - 1, 10) == data[-1:]
        assert b"".join(ra.iter_chunks(chunk_size=7)) == data
        assert b"".join(ra.iter_chunks(5, 100, chunk_size=33)) == data[5:105]
        with pytest.raises(errdefs.InvalidArgument):
            ra.read_at(-1, 1)
    with pytest.raises(errdefs.FailedPrecondition):
        ra.read_at(0, 1)


def test_reader_survives_delete(store: LocalStore) -> None:
    d = put(store, "r", b"still here")
    with store.reader_at(d) as ra:
        store.delete(d)
        assert ra.read_at(0, 100) == b"still here"


def test_walk(store: LocalStore, tmp_path: Path) -> None:
    blobs = [b"one", b"two", b"three"]
    digests = sorted((put(store, f"w{i}", b) for i, b in enumerate(blobs)), key=str)
    with store.open_writer("w512", expected=sha512(b"four")) as w:
        w.write(b"four")
        d512 = w.commit()
    # Junk that is not a blob must be ignored, not reported or fatal.
    (Path(store.root) / "blobs" / "sha256" / "not-a-digest").write_bytes(b"x")
    (Path(store.root) / "blobs" / "md5").mkdir()

    seen: list[Info] = []
    store.walk(seen.append)
    assert [i.digest for i in seen] == [*digests, d512]
    assert {i.size for i in seen} == {3, 5, 4}

    small: list[Info] = []
    store.walk(small.append, lambda i: i.size == 3)
    assert sorted(str(i.digest) for i in small) == sorted(str(sha256(b)) for b in (b"one", b"two"))

    def boom(info: Info) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        store.walk(boom)


# ---------------------------------------------------------------------------
# Writers and ingests


def test_status_of_open_writer_and_disk(store: LocalStore) -> None:
    data = b"x" * 100
    with store.open_writer("st", total=100, expected=sha256(data)) as w:
        w.write(data[:40])
        s = w.status()
        assert (s.ref, s.offset, s.total, s.expected) == ("st", 40, 100, sha256(data))
        disk = store.status("st")
        assert (disk.ref, disk.offset, disk.total, disk.expected) == ("st", 40, 100, sha256(data))
        assert disk.started_at == s.started_at
    assert store.status("st").offset == 40
    with pytest.raises(errdefs.NotFound):
        store.status("missing")


def test_list_statuses(store: LocalStore) -> None:
    for ref, n in (("b", 2), ("a", 1), ("c", 3)):
        with store.open_writer(ref) as w:
            w.write(b"z" * n)
    statuses = store.list_statuses()
    assert [(s.ref, s.offset) for s in statuses] == [("a", 1), ("b", 2), ("c", 3)]
    assert [s.ref for s in store.list_statuses(lambda s: s.offset >= 2)] == ["b", "c"]
    # A half-created ingest (no data file yet) is not listed.
    half = Path(store.ingest_path("half"))
    half.mkdir()
    (half / "ref").write_text("half")
    assert [s.ref for s in store.list_statuses()] == ["a", "b", "c"]


def test_empty_ref_rejected(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="ref must not be empty"):
        store.open_writer("")


def test_locked_ref(store: LocalStore, tmp_path: Path) -> None:
    w = store.open_writer("locked")
    with pytest.raises(errdefs.Unavailable, match="ref locked locked"):
        store.open_writer("locked")
    # A second store object on the same root shares the lock table.
    other = LocalStore(tmp_path / "content")
    with pytest.raises(errdefs.Unavailable):
        other.open_writer("locked")
    # Different refs are independent.
    other.open_writer("free").close()
    w.close()
    w.close()  # idempotent
    store.open_writer("locked").close()


def test_closed_writer_refuses_work(store: LocalStore) -> None:
    w = store.open_writer("c")
    w.close()
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        w.write(b"x")
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        w.commit()


def test_resume_after_close_with_new_store(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    root = tmp_path / "content"
    s1 = LocalStore(root)
    w = s1.open_writer("resume", total=len(data), expected=sha256(data))
    w.write(data[:123_456])
    w.close()

    s2 = LocalStore(root)  # a daemon restart
    assert s2.status("resume").offset == 123_456
    with s2.open_writer("resume", total=len(data)) as w2:
        st_ = w2.status()
        assert st_.offset == 123_456
        assert st_.expected == sha256(data)  # remembered across the restart
        assert w2.digest() == sha256(data[:123_456])  # existing data re-hashed
        w2.write(data[123_456:])
        assert w2.commit() == sha256(data)  # total and expected from the ingest
    assert s2.read_blob(sha256(data)) == data
    assert s2.list_statuses() == []


def test_resume_after_real_crash(tmp_path: Path) -> None:
    root = tmp_path / "content"
    data = os.urandom(200_000)
    prefix = 150_000
    (tmp_path / "data").write_bytes(data)
    script = textwrap.dedent(
        f"""
        import os
        from berth.core.content import LocalStore
        store = LocalStore({str(root)!r})
        w = store.open_writer("crash", total={len(data)})
        w.write(open({str(tmp_path / "data")!r}, "rb").read()[:{prefix}])
        os._exit(17)  # die without close(): no fsync, no updatedat, no unlock
        """
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert proc.returncode == 17

    # Only an ingest survives; nothing partial in blobs/.
    assert list((root / "blobs").rglob("*")) == []
    store = LocalStore(root)
    assert store.status("crash").offset == prefix
    with store.open_writer("crash") as w:
        assert w.status().offset == prefix
        assert w.status().total == len(data)
        w.write(data[prefix:])
        d = w.commit(len(data), sha256(data))
    assert store.read_blob(d) == data


def test_bad_size_commits_nothing_and_keeps_ingest(store: LocalStore) -> None:
    data = b"0123456789"
    w = store.open_writer("bad-size")
    w.write(data)
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit size 10, expected 11"):
        w.commit(11, sha256(data))
    assert not Path(store.blob_path(sha256(data))).exists()
    with pytest.raises(errdefs.NotFound):
        store.info(sha256(data))
    # Writer is closed (lock released) and the ingest is intact and resumable.
    assert store.status("bad-size").offset == 10
    with store.open_writer("bad-size") as w2:
        assert w2.digest() == sha256(data)
        assert w2.commit(10, sha256(data)) == sha256(data)


def test_bad_size_from_declared_total(store: LocalStore) -> None:
    w = store.open_writer("short", total=5)
    w.write(b"abc")
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit size 3, expected 5"):
        w.commit()


def test_bad_digest_commits_nothing(store: LocalStore) -> None:
    wrong = sha256(b"something else")
    w = store.open_writer("bad-digest")
    w.write(b"payload")
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit digest") as exc:
        w.commit(7, wrong)
    assert str(sha256(b"payload")) in str(exc.value)
    seen: list[Info] = []
    store.walk(seen.append)
    assert seen == []
    assert store.status("bad-digest").offset == 7
    assert Path(store.ingest_path("bad-digest"), "data").read_bytes() == b"payload"
    store.abort("bad-digest")


def test_bad_digest_argument_at_commit_still_closes(store: LocalStore) -> None:
    w = store.open_writer("x")
    w.write(b"a")
    with pytest.raises(errdefs.InvalidArgument):
        w.commit(1, "sha256:zz")
    store.open_writer("x").close()  # lock was released


def test_sha512(store: LocalStore) -> None:
    data = os.urandom(5000)
    with store.open_writer("s512", total=len(data), expected=sha512(data)) as w:
        w.write(data)
        assert w.digest() == sha512(data)
        d = w.commit()
    assert d == sha512(data)
    assert Path(store.root, "blobs", "sha512", d.hex).read_bytes() == data
    assert store.info(d).size == len(data)

    # sha512 named only at commit: the writer hashed sha256, so it re-reads.
    other = data[::-1]
    with store.open_writer("s512b") as w:
        w.write(other)
        assert w.commit(len(other), sha512(other)) == sha512(other)
    with store.open_writer("s512c") as w:
        w.write(b"nope")
        with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit digest sha512:"):
            w.commit(4, sha512(b"yes!"))


def test_commit_existing_digest(store: LocalStore) -> None:
    data = b"duplicate"
    d = put(store, "first", data)
    w = store.open_writer("second")
    w.write(data)
    with pytest.raises(errdefs.AlreadyExists, match=str(d)):
        w.commit(len(data), d)
    # Ingest removed, lock released, original blob untouched.
    with pytest.raises(errdefs.NotFound):
        store.status("second")
    assert store.read_blob(d) == data
    store.open_writer("second").close()


def test_open_writer_with_existing_expected(store: LocalStore) -> None:
    d = put(store, "first", b"here")
    with pytest.raises(errdefs.AlreadyExists):
        store.open_writer("again", expected=d)
    # The failed open must not leave the ref locked or an ingest behind.
    with pytest.raises(errdefs.NotFound):
        store.status("again")
    store.open_writer("again").close()


def test_write_at_semantics(store: LocalStore) -> None:
    with store.open_writer("wa") as w:
        assert w.write_at(0, b"hello") == 5
        assert w.write_at(5, b" world") == 6
        with pytest.raises(OutOfRange, match="write @3 must occur at current offset 11"):
            w.write_at(3, b"x")
        with pytest.raises(OutOfRange):
            w.write_at(12, b"x")
        with pytest.raises(errdefs.InvalidArgument):
            w.write_at(-1, b"x")
        assert w.status().offset == 11
        # Offset 0 on a non-empty ingest restarts it, as containerd's service does.
        w.write_at(0, b"fresh")
        assert w.status().offset == 5
        assert w.digest() == sha256(b"fresh")
        w.write_at(0, b"")
        assert w.status().offset == 0
        w.write(b"final")
        assert w.commit() == sha256(b"final")


def test_truncate(store: LocalStore) -> None:
    with store.open_writer("t") as w:
        w.write(b"abcdef")
        w.truncate(3)
        assert w.status().offset == 3
        assert w.digest() == sha256(b"abc")
        with pytest.raises(errdefs.InvalidArgument):
            w.truncate(4)
        with pytest.raises(errdefs.InvalidArgument):
            w.truncate(-1)
        w.write(b"xyz")
        assert w.commit() == sha256(b"abcxyz")


def test_abort(store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound):
        store.abort("nothing")
    with store.open_writer("ab") as w:
        w.write(b"data")
    store.abort("ab")
    with pytest.raises(errdefs.NotFound):
        store.status("ab")
    assert os.listdir(Path(store.root) / "ingest") == []
    with store.open_writer("ab") as w:
        assert w.status().offset == 0


def test_abort_under_active_writer(store: LocalStore) -> None:
    w = store.open_writer("gone")
    w.write(b"data")
    store.abort("gone")
    with pytest.raises(errdefs.NotFound, match="aborted"):
        w.commit()
    assert store.list_statuses() == []
    store.open_writer("gone").close()


def test_changed_total_restarts_ingest(store: LocalStore) -> None:
    with store.open_writer("tot", total=10) as w:
        w.write(b"12345")
    with store.open_writer("tot", total=20) as w:
        assert w.status().offset == 0
        assert w.status().total == 20
    # Same total (or unknown) resumes.
    with store.open_writer("tot", total=20) as w:
        w.write(b"ab")
    with store.open_writer("tot") as w:
        assert w.status().offset == 2
        assert w.status().total == 20


def test_corrupt_ingest_metadata_restarts(store: LocalStore) -> None:
    with store.open_writer("cor") as w:
        w.write(b"abc")
    Path(store.ingest_path("cor"), "startedat").write_text("yesterday")
    with pytest.raises(errdefs.FailedPrecondition, match="corrupt"):
        store.status("cor")
    assert store.list_statuses() == []
    with store.open_writer("cor") as w:
        assert w.status().offset == 0
        w.write(b"new")
    assert store.status("cor").offset == 3


def test_reads_containerd_timestamps(store: LocalStore) -> None:
    # An ingest written by containerd: Go RFC 3339 with nanoseconds and offset.
    path = Path(store.ingest_path("from-go"))
    path.mkdir()
    (path / "ref").write_text("from-go")
    (path / "startedat").write_text("2024-03-01T10:20:30.123456789+01:00")
    (path / "updatedat").write_text("2024-03-01T09:20:31Z")
    (path / "total").write_text("9")
    (path / "data").write_bytes(b"abc")
    s = store.status("from-go")
    assert s.started_at == datetime(2024, 3, 1, 9, 20, 30, 123456, tzinfo=UTC)
    assert (s.offset, s.total, s.expected) == (3, 9, None)
    with store.open_writer("from-go") as w:
        w.write(b"defghi")
        assert w.commit() == sha256(b"abcdefghi")


def test_concurrent_writers_different_refs(store: LocalStore) -> None:
    payloads = {f"ref-{i}": os.urandom(50_000 + i) for i in range(16)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(payloads))

    def work(ref: str, data: bytes) -> None:
        try:
            barrier.wait()
            with store.open_writer(ref, total=len(data)) as w:
                for i in range(0, len(data), 4096):
                    w.write(data[i : i + 4096])
                w.commit(len(data), sha256(data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in payloads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for data in payloads.values():
        assert store.read_blob(sha256(data)) == data
    assert store.list_statuses() == []


def test_concurrent_commits_same_content(store: LocalStore) -> None:
    data = os.urandom(10_000)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        w = store.open_writer(f"dup-{i}")
        w.write(data)
        barrier.wait()
        try:
            w.commit(len(data), sha256(data))
            results.append("ok")
        except errdefs.AlreadyExists:
            results.append("exists")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 7 + ["ok"]
    assert store.read_blob(sha256(data)) == data
    assert store.list_statuses() == []


# ---------------------------------------------------------------------------
# Labels


def test_labels_need_a_label_store(store: LocalStore) -> None:
    d = put(store, "l", b"labelled")
    with pytest.raises(errdefs.FailedPrecondition, match="immutable"):
        store.update(Info(d, 8, datetime.now(UTC), datetime.now(UTC), {"a": "b"}))


def test_labels_with_label_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "c", label_store=MemoryLabelStore())
    data = b"labelled"
    with store.open_writer("l") as w:
        w.write(data)
        d = w.commit(labels={"a": "1", "b": "2"})
    info = store.info(d)
    assert info.labels == {"a": "1", "b": "2"}

    new = Info(d, 0, info.created_at, info.updated_at, {"a": "10", "c": "3"})
    assert store.update(new, ["labels.a"]).labels == {"a": "10", "b": "2"}
    assert store.update(Info(d, 0, info.created_at, info.updated_at, {}), ["labels.b"]).labels == {
        "a": "10"
    }
    assert store.update(new).labels == {"a": "10", "c": "3"}
    assert store.info(d).labels == {"a": "10", "c": "3"}
    with pytest.raises(errdefs.InvalidArgument, match='cannot update "size"'):
        store.update(new, ["size"])
    with pytest.raises(errdefs.NotFound):
        store.update(Info(sha256(b"absent"), 0, info.created_at, info.updated_at, {}))


# ---------------------------------------------------------------------------
# copy_into


class Source:
    """A byte source counting how it was used."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.opened_at: list[int] = []

    def open_at(self, offset: int) -> io.BytesIO:
        self.opened_at.append(offset)
        return io.BytesIO(self.data[offset:])


def test_copy_into_fresh(store: LocalStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert copy_into(store, "layer", io.BytesIO(data), desc(data), labels={"k": "v"}) is True
    assert store.read_blob(sha256(data)) == data
    assert store.list_statuses() == []


def test_copy_into_iterable_and_existing(store: LocalStore) -> None:
    data = b"chunked" * 1000
    chunks = [data[i : i + 333] for i in range(0, len(data), 333)]
    assert copy_into(store, "it", iter(chunks), desc(data)) is True

    class Untouchable:
        def read(self, n: int = -1, /) -> bytes:
            raise AssertionError("must not be read")

    assert copy_into(store, "it2", Untouchable(), desc(data)) is False


def test_copy_into_resumes_with_open_at(store: LocalStore) -> None:
    data = os.urandom(100_000)
    with store.open_writer("res", total=len(data), expected=sha256(data)) as w:
        w.write(data[:40_000])
    src = Source(data)
    assert copy_into(store, "res", None, desc(data), open_at=src.open_at) is True
    assert src.opened_at == [40_000]
    assert store.read_blob(sha256(data)) == data


def test_copy_into_open_at_only_fresh(store: LocalStore) -> None:
    data = b"fresh via open_at"
    src = Source(data)
    assert copy_into(store, "oa", None, desc(data), open_at=src.open_at) is True
    assert src.opened_at == [0]


def test_copy_into_resumes_by_seeking(store: LocalStore) -> None:
    data = os.urandom(10_000)
    with store.open_writer("seek") as w:
        w.write(data[:3000])
    reader = io.BytesIO(data)
    assert copy_into(store, "seek", reader, desc(data)) is True
    assert store.read_blob(sha256(data)) == data


def test_copy_into_resumes_by_skipping_unseekable(store: LocalStore) -> None:
    data = os.urandom(10_000)
    with store.open_writer("skip") as w:
        w.write(data[:3001])
    chunks: Iterator[bytes] = (data[i : i + 1000] for i in range(0, len(data), 1000))
    assert copy_into(store, "skip", chunks, desc(data)) is True
    assert store.read_blob(sha256(data)) == data


def test_copy_into_short_read_keeps_progress(store: LocalStore) -> None:
    data = os.urandom(50_000)
    with pytest.raises(ShortRead, match="source ended after 20000 of 50000"):
        copy_into(store, "short", io.BytesIO(data[:20_000]), desc(data))
    assert store.status("short").offset == 20_000
    src = Source(data)
    assert copy_into(store, "short", None, desc(data), open_at=src.open_at) is True
    assert src.opened_at == [20_000]


def test_copy_into_bad_digest_discards_ingest(store: LocalStore) -> None:
    data = b"a" * 1000
    bad = Descriptor("x", sha256(b"b" * 1000), 1000)
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit digest"):
        copy_into(store, "bad", io.BytesIO(data), bad)
    assert store.list_statuses() == []
    seen: list[Info] = []
    store.walk(seen.append)
    assert seen == []


def test_copy_into_too_long_source(store: LocalStore) -> None:
    data = b"x" * 100
    with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit size"):
        copy_into(store, "long", io.BytesIO(data + b"extra"), desc(data), chunk_size=10)
    assert store.list_statuses() == []


def test_copy_into_garbage_longer_ingest_restarts(store: LocalStore) -> None:
    data = b"y" * 100
    with store.open_writer("g") as w:
        w.write(b"z" * 150)
    assert copy_into(store, "g", io.BytesIO(data), desc(data)) is True


def test_copy_into_lock_timeout_and_wait(store: LocalStore) -> None:
    data = b"waited for"
    holder = store.open_writer("busy")
    t0 = time.monotonic()
    with pytest.raises(errdefs.Unavailable):
        copy_into(store, "busy", io.BytesIO(data), desc(data), lock_timeout=0.2)
    assert time.monotonic() - t0 >= 0.2

    timer = threading.Timer(0.2, holder.close)
    timer.start()
    try:
        assert copy_into(store, "busy", io.BytesIO(data), desc(data), lock_timeout=10) is True
    finally:
        timer.join()


def test_copy_into_needs_a_source(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        copy_into(store, "n", None, desc(b"x"))


def test_status_type_is_value(store: LocalStore) -> None:
    with store.open_writer("v") as w:
        assert isinstance(w.status(), Status)
