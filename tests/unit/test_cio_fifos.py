"""berth.client.cio without a daemon: this test plays the shim's side of the FIFOs."""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from berth.client import cio


def shim_writes(path: str, data: bytes) -> None:
    """What a shim does with an output FIFO: open it for writing, write, close."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_streams_make_fifos_in_a_private_directory(tmp_path: Path) -> None:
    made = cio.streams(io.BytesIO(b""), io.BytesIO(), io.BytesIO(), fifo_dir=str(tmp_path))("c1")
    try:
        cfg = made.config
        d = Path(cfg.stdout).parent
        assert d.parent == tmp_path
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert [Path(p).name for p in (cfg.stdin, cfg.stdout, cfg.stderr)] == [
            "c1-stdin",
            "c1-stdout",
            "c1-stderr",
        ]
        assert all(stat.S_ISFIFO(os.stat(p).st_mode) for p in (cfg.stdin, cfg.stdout, cfg.stderr))
        assert cfg.terminal is False
    finally:
        made.close()
    assert not d.exists()


def test_output_written_before_and_after_is_copied_to_the_end(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    made = cio.streams(None, out, err, fifo_dir=str(tmp_path))("c2")
    # A process that writes and exits before anyone looks is still read fully.
    shim_writes(made.config.stdout, b"x" * 200_000)
    shim_writes(made.config.stderr, b"oops\n")
    assert made.wait(10)
    made.close()
    assert out.getvalue() == b"x" * 200_000
    assert err.getvalue() == b"oops\n"


def test_one_output_stream_still_gets_both_fifos(tmp_path: Path) -> None:
    # containerd's Go shim needs stdout and stderr as a pair.
    made = cio.streams(None, io.BytesIO(), None, fifo_dir=str(tmp_path))("c3")
    try:
        assert made.config.stdout and made.config.stderr and not made.config.stdin
    finally:
        made.close()


def test_a_terminal_has_no_stderr_fifo(tmp_path: Path) -> None:
    made = cio.streams(
        io.BytesIO(), io.BytesIO(), io.BytesIO(), terminal=True, fifo_dir=str(tmp_path)
    )("t")
    try:
        assert made.config.terminal and made.config.stdin and made.config.stdout
        assert made.config.stderr == ""
    finally:
        made.close()


def test_stdin_is_copied_then_closed_and_the_hook_runs(tmp_path: Path) -> None:
    made = cio.streams(io.BytesIO(b"hello\nworld\n"), None, None, fifo_dir=str(tmp_path))("c4")
    hooked = threading.Event()
    made._on_stdin_eof(hooked.set)
    # The shim opens its read end a little later, as Create does.
    time.sleep(0.05)
    fd = os.open(made.config.stdin, os.O_RDONLY)
    got = b""
    while chunk := os.read(fd, 1024):
        got += chunk
    os.close(fd)
    assert got == b"hello\nworld\n"
    assert hooked.wait(5)
    made.close()


def test_a_hook_set_after_eof_runs_at_once(tmp_path: Path) -> None:
    made = cio.streams(io.BytesIO(b""), None, None, fifo_dir=str(tmp_path))("c5")
    fd = os.open(made.config.stdin, os.O_RDONLY)
    assert os.read(fd, 10) == b""
    os.close(fd)
    calls: list[int] = []
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        made._on_stdin_eof(lambda: calls.append(1))
        time.sleep(0.01)
    assert calls
    made.close()


def test_cancel_stops_copying_when_no_writer_ever_comes(tmp_path: Path) -> None:
    made = cio.streams(
        io.BytesIO(b"never read"), io.BytesIO(), io.BytesIO(), fifo_dir=str(tmp_path)
    )("c6")
    assert not made.wait(0.2)  # nobody wrote, nobody closed: still copying
    started = time.monotonic()
    made.close()
    assert time.monotonic() - started < 3
    assert not Path(made.config.stdout).parent.exists()


def test_log_uris_pass_through_untouched(tmp_path: Path) -> None:
    log = cio.log_file(tmp_path / "a b.log")("x")
    assert log.config == cio.IOConfig(
        "", f"file://{tmp_path}/a%20b.log", f"file://{tmp_path}/a%20b.log"
    )
    binary = cio.binary_logger("/usr/bin/logger", {"tag": "web", "a": "1"})("x")
    assert binary.config.stdout == "binary:///usr/bin/logger?a=1&tag=web"
    assert cio.null_io("x").config == cio.IOConfig()
    assert log.wait(0) and binary.wait(0)


def test_load_removes_only_a_directory_streams_made(tmp_path: Path) -> None:
    made = cio.streams(None, io.BytesIO(), io.BytesIO(), fifo_dir=str(tmp_path))("c7")
    made.cancel()
    d = Path(made.config.stdout).parent
    cio.load(made.config, "other-id").close()
    assert d.exists()  # names do not match the process: not ours to remove
    cio.load(made.config, "c7").close()
    assert not d.exists()
    elsewhere = tmp_path / "keep"
    elsewhere.mkdir()
    cio.load(cio.IOConfig(stdout=f"file://{elsewhere}/log"), "c7").close()
    assert elsewhere.exists()


def test_attach_reopens_an_existing_fifo(tmp_path: Path) -> None:
    made = cio.streams(None, io.BytesIO(), io.BytesIO(), fifo_dir=str(tmp_path))("c8")
    made.cancel()  # the first client went away; the FIFOs stay
    holder = os.open(made.config.stdout, os.O_RDONLY | os.O_NONBLOCK)  # the shim's read holder
    writer = os.open(made.config.stdout, os.O_WRONLY)
    out = io.BytesIO()
    again = cio.attach_streams(None, out, None)(made.config)
    os.write(writer, b"after attach\n")
    os.close(writer)
    os.close(holder)
    assert again.wait(10)
    again.close()
    assert out.getvalue() == b"after attach\n"
    assert Path(made.config.stdout).exists()  # attaching never removes FIFOs
    made.close()


def test_creating_under_a_missing_root_makes_it(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "fifo"
    made = cio.streams(None, io.BytesIO(), None, fifo_dir=str(root))("c9")
    try:
        assert root.is_dir()
    finally:
        made.close()


def test_terminal_size_needs_a_terminal() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            cio.terminal_size(r)
    finally:
        os.close(r)
        os.close(w)
