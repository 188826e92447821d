"""``berth content``: list, read, fetch, write, watch and remove blobs in the content store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._group import Group
from berth.cli._output import (
    echo_json,
    echo_table,
    format_option,
    label_string,
    parse_labels,
    quiet_option,
    rfc3339,
)
from berth.cli._progress import (
    choose_mode,
    credentials,
    human_bytes,
    progress_sink,
    registry_options,
)

_READ_CHUNK = 1 << 20


def _age(moment: datetime) -> str:
    """How long ago, in ctr's rough words: ``3 seconds``, ``2 hours``."""
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@click.group(
    "content",
    cls=Group,
    aliases={"list": "ls", "remove": "rm", "delete": "rm", "del": "rm"},
)
def content() -> None:
    """Manage the content store.

    The content store holds immutable blobs (layers, manifests, configs)
    addressed by digest, and the ingests that are writing new ones. Each
    namespace sees only its own blobs (-n). Blobs nothing references are
    removed by garbage collection.
    """


@content.command("ls")
@quiet_option("digests")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List blobs.

    Shows ctr's columns: DIGEST, SIZE, AGE and LABELS. FILTERS use
    containerd's syntax over digest, size and labels.KEY.

    \b
    Examples:
      berth content ls
      berth content ls -q 'labels."containerd.io/gc.root"'
      berth content ls --format json | jq '[.[].size] | add'
    """
    infos = g.client().content.list(filters)
    if quiet:
        for info in infos:
            click.echo(info.digest)
    elif fmt == "json":
        echo_json(
            [
                {
                    "digest": i.digest,
                    "size": i.size,
                    "created_at": rfc3339(i.created_at),
                    "updated_at": rfc3339(i.updated_at),
                    "labels": i.labels,
                }
                for i in infos
            ]
        )
    else:
        echo_table(
            ("DIGEST", "SIZE", "AGE", "LABELS"),
            (
                (
                    i.digest,
                    human_bytes(i.size),
                    _age(i.created_at),
                    label_string(i.labels, empty="-"),
                )
                for i in infos
            ),
        )


@content.command("get")
@click.argument("digest")
@pass_globals
def get(g: Globals, digest: str) -> None:
    """Write a blob to stdout.

    \b
    Examples:
      berth content get sha256:0123... > blob
      berth content get $(berth images ls --format json | jq -r '.[0].target.digest') | jq .
    """
    out = sys.stdout.buffer
    g.client().content.get(digest, out.write)
    out.flush()


@content.command("fetch")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="PLATFORM",
    help="Platform to fetch (repeatable).",
)
@click.option("--all-platforms", is_flag=True, help="Fetch every platform of an index.")
@registry_options
@click.option(
    "--max-concurrent-downloads",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Blobs to fetch at once. Default: the daemon's (3).",
)
@click.option("--quiet", "-q", is_flag=True, help="Show no progress.")
@format_option
@click.argument("ref")
@pass_globals
def fetch(
    g: Globals,
    platforms: tuple[str, ...],
    all_platforms: bool,
    plain_http: bool,
    hosts_dir: str | None,
    user: str | None,
    max_concurrent_downloads: int,
    quiet: bool,
    fmt: str,
    ref: str,
) -> None:
    """Fetch an image's content without unpacking it.

    Like `berth images pull --no-unpack`: the daemon downloads REF's
    manifests, configs and layers into the content store and records the
    image.

    \b
    Examples:
      berth content fetch --plain-http 127.0.0.1:5000/app:1
      berth content fetch --all-platforms 127.0.0.1:5000/app:1
    """
    if all_platforms and platforms:
        raise click.UsageError("--platform and --all-platforms cannot be used together")
    name, password = credentials(user)
    with progress_sink(choose_mode(fmt, quiet), f"fetch {ref}") as sink:
        image = g.client().pull(
            ref,
            platform=platforms or None,
            all_platforms=all_platforms,
            unpack=False,
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=name,
            password=password,
            max_concurrent_downloads=max_concurrent_downloads,
            on_progress=sink,
        )
    if fmt == "json":
        echo_json({"name": image.name, "digest": image.target.digest})
    elif not quiet:
        click.echo(f"{image.name}: {image.target.digest}")


def _stdin_chunks() -> Iterator[bytes]:
    stream = sys.stdin.buffer
    while chunk := stream.read(_READ_CHUNK):
        yield chunk


@content.command("ingest")
@click.option(
    "--expected-size", type=click.IntRange(min=0), default=0, help="Size to verify at commit."
)
@click.option("--expected-digest", metavar="DIGEST", help="Digest to verify at commit.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label the blob.")
@click.argument("ref")
@pass_globals
def ingest(
    g: Globals,
    expected_size: int,
    expected_digest: str | None,
    labels: tuple[str, ...],
    ref: str,
) -> None:
    """Write stdin to the content store as a blob and print its digest.

    REF names the ingest while it is written. As with ctr the blob is held
    by no lease: unless a label such as containerd.io/gc.root=... or an
    image references it, the next garbage collection removes it.

    \b
    Examples:
      berth content ingest my-config < config.json
      tar -c dir | berth content ingest --label containerd.io/gc.root=keep layer-1
    """
    digest = g.client().content.ingest(
        ref,
        _stdin_chunks(),
        expected=expected_digest,
        size=expected_size,
        labels=parse_labels(labels, bare=""),
    )
    click.echo(digest)


@content.command("active")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def active(g: Globals, fmt: str, filters: tuple[str, ...]) -> None:
    """List ingests in progress.

    Shows ctr's columns: REF, SIZE (bytes written / expected) and AGE.
    FILTERS use containerd's syntax over the field ref.

    \b
    Examples:
      berth content active
      berth content active --format json
    """
    statuses = g.client().content.active(filters)
    if fmt == "json":
        echo_json(
            [
                {
                    "ref": s.ref,
                    "offset": s.offset,
                    "total": s.total,
                    "expected": s.expected,
                    "started_at": rfc3339(s.started_at),
                    "updated_at": rfc3339(s.updated_at),
                }
                for s in statuses
            ]
        )
        return
    echo_table(
        ("REF", "SIZE", "AGE"),
        (
            (s.ref, f"{human_bytes(s.offset)}/{human_bytes(s.total)}", _age(s.started_at))
            for s in statuses
        ),
    )


@content.command("rm")
@click.argument("digests", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, digests: tuple[str, ...]) -> None:
    """Remove blobs from the namespace.

    Each blob named by DIGESTS is removed from the namespace (its file goes
    at the next garbage collection), printing its digest. Stops at the
    first one that cannot be removed.

    \b
    Examples:
      berth content rm sha256:0123...
    """
    c = g.client()
    for digest in digests:
        c.content.delete(digest)
        click.echo(digest)


@content.command("prune")
@pass_globals
def prune(g: Globals) -> None:
    """Collect garbage now and report what went.

    Runs a garbage collection in the daemon before returning (what
    deleting a lease with --sync does) and prints how many of the
    namespace's blobs and ingests it removed.

    \b
    Examples:
      berth content prune
      berth -n build content prune
    """
    c = g.client()
    blobs = {i.digest for i in c.content.list()}
    ingests = {s.ref for s in c.content.active()}
    lease = c.leases.create(labels={"berth.io/purpose": "content prune"})
    c.leases.delete(lease.id, sync=True)
    gone_blobs = blobs - {i.digest for i in c.content.list()}
    gone_ingests = ingests - {s.ref for s in c.content.active()}
    click.echo(f"removed {len(gone_blobs)} blob(s) and {len(gone_ingests)} ingest(s)")
