"""Showing pull and push progress, and the registry options pull and push share.

Three renderings of the same stream of :class:`~berth.client.TransferProgress`:

* ``bars`` (stdout is a terminal): one ``rich`` bar per blob with bytes and
  rate, plus a total line; finished blobs stay listed, as with ctr.
* ``lines`` (stdout is not a terminal): one plain line each time a blob
  reaches a new status, so logs stay readable and small.
* ``json``: one JSON object per update (``--format json``), for scripts.

``rich`` is imported only when bars are drawn, so help and scripts never pay
for it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from berth.client.types import TransferProgress

F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_ENV = "BERTH_PASSWORD"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: int) -> str:
    """``1.1 MiB``: sizes as ctr prints them (binary units, one decimal)."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def registry_options(fn: F) -> F:
    """``--plain-http``, ``--hosts-dir`` and ``--user``, as ctr spells them."""
    options = [
        click.option(
            "--user",
            "-u",
            metavar="USER[:PASSWORD]",
            help=(
                "Credentials for the registry. Without :PASSWORD the password is read "
                f"from ${PASSWORD_ENV}, or asked for when stdin is a terminal."
            ),
        ),
        click.option(
            "--hosts-dir",
            metavar="DIR",
            help=(
                "Registry host configuration on the daemon's host: DIR/HOST/hosts.toml "
                "(containerd's format: server, ca, skip_verify, capabilities...)."
            ),
        ),
        click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to the registry."),
    ]
    for option in options:
        fn = option(fn)
    return fn


def credentials(user: str | None) -> tuple[str | None, str | None]:
    """``(user, password)`` for the SDK from ``--user``: the password from the
    option, else ``$BERTH_PASSWORD``, else a prompt (only on a terminal)."""
    if not user:
        return None, None
    name, sep, password = user.partition(":")
    if sep:
        return name, password
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return name, env
    if not sys.stdin.isatty():
        raise click.UsageError(
            f"--user {name}: no password given; use --user {name}:PASSWORD or set ${PASSWORD_ENV}"
        )
    return name, click.prompt("Password", hide_input=True, err=True)


def _json_line(p: TransferProgress) -> str:
    return json.dumps(
        {
            "key": p.key,
            "digest": p.digest,
            "media_type": p.media_type,
            "status": p.status,
            "offset": p.offset,
            "total": p.total,
        }
    )


@contextmanager
def progress_sink(mode: str, action: str) -> Iterator[Callable[[TransferProgress], None]]:
    """A callback for ``on_progress`` that renders as ``mode`` (bars, lines, json, none)."""
    if mode == "json":
        yield lambda p: click.echo(_json_line(p))
    elif mode == "lines":
        yield _Lines().update
    elif mode == "bars":
        bars = _Bars(action)
        with bars:
            yield bars.update
    else:
        yield lambda p: None


def choose_mode(fmt: str, quiet: bool) -> str:
    if quiet:
        return "none"
    if fmt == "json":
        return "json"
    return "bars" if sys.stdout.isatty() else "lines"


class _Lines:
    """One line per blob and status change: ``layer-sha256:ab… done 1.1 MiB``."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def update(self, p: TransferProgress) -> None:
        if self._last.get(p.key) == p.status:
            return
        self._last[p.key] = p.status
        click.echo(f"{p.key}: {p.status} {human_bytes(p.offset)}/{human_bytes(p.total)}")


class _Bars:
    """rich bars: one per blob, plus the total with its rate."""

    def __init__(self, action: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            refresh_per_second=8,
        )
        self._total = self._progress.add_task(f"[bold]{action}", total=0, status="")
        self._tasks: dict[str, Any] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._start = time.monotonic()

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, p: TransferProgress) -> None:
        task = self._tasks.get(p.key)
        label = _short(p.key)
        if task is None:
            task = self._tasks[p.key] = self._progress.add_task(
                label, total=p.total or None, status=p.status
            )
        # An unpacking layer has all its bytes: keep its bar full.
        done = p.total if p.finished or p.status == "unpacking" else p.offset
        self._progress.update(task, completed=done, total=p.total or None, status=p.status)
        if p.status in ("unpacking", "unpacked"):
            return  # bytes were counted when the layer downloaded
        self._sizes[p.key] = (done, p.total)
        moved = sum(d for d, _ in self._sizes.values())
        total = sum(t for _, t in self._sizes.values())
        self._progress.update(self._total, completed=moved, total=total)


def _short(key: str) -> str:
    """``layer-sha256:0123456789ab`` for ``layer-sha256:<64 hex>``."""
    kind, sep, digest = key.rpartition("sha256:")
    return f"{kind}{sep}{digest[:12]}" if sep else key[:40]
