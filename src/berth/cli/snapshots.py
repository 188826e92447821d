"""``berth snapshots``: list, inspect, create, commit, diff and remove snapshots.

The commands and flags are ctr's (``ctr snapshots ...``), over containerd's
Snapshots service and, for ``diff``, its Diff service, so they work against
berthd and containerd alike and see each other's snapshots. Every command
works on one snapshotter: ``--snapshotter`` on the group as with ctr
(``$CONTAINERD_SNAPSHOTTER``, default ``overlayfs``), or on the command.

What berth adds: ``--format json`` and ``-q`` on the listings, filters on
``ls``, and a GC root label on ``view`` (ctr leaves views unrooted, so the next
garbage collection may take them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from berth import errdefs
from berth.cli._context import Globals, pass_globals
from berth.cli._errors import from_error
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

if TYPE_CHECKING:
    from berth.client._snapshots import Snapshots
    from berth.client.types import Mount, SnapshotInfo

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOTTER_ENV = "CONTAINERD_SNAPSHOTTER"
GC_ROOT_LABEL = "containerd.io/gc.root"
_META_KEY = "berth.snapshots.snapshotter"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class SnapshotsGroup(Group):
    """The group: adds a hint when the daemon has no snapshotter of the chosen name."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errdefs.InvalidArgument as exc:
            if "snapshotter not loaded" not in str(exc):
                raise
            raise from_error(
                exc,
                hint="`berth plugins ls 'type==io.containerd.snapshotter.v1'` lists the"
                " snapshotters the daemon runs",
            ) from exc


@click.group(
    "snapshots",
    cls=SnapshotsGroup,
    aliases={
        "list": "ls",
        "delete": "rm",
        "del": "rm",
        "remove": "rm",
        "m": "mounts",
        "mount": "mounts",
    },
)
@click.option(
    "--snapshotter",
    envvar=SNAPSHOTTER_ENV,
    metavar="NAME",
    show_envvar=True,
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    help="Snapshotter to work on (each command also takes this option).",
)
@click.pass_context
def snapshots(ctx: click.Context, snapshotter: str) -> None:
    """Manage snapshots.

    Snapshots are the filesystems containers run on: an unpacked image is a
    chain of committed snapshots named by chain IDs, and a container's root
    is an active (writable) snapshot prepared on top. Commands work on one
    snapshotter (overlayfs, native...) in the namespace chosen with -n; a
    snapshot prepared here is what ctr sees, and the other way round.
    """
    ctx.meta[_META_KEY] = snapshotter or DEFAULT_SNAPSHOTTER


def _snapshotter_option(fn: F) -> F:
    return click.option(
        "--snapshotter",
        "snapshotter",
        default=None,
        metavar="NAME",
        help="Snapshotter to work on. Default: the group's --snapshotter.",
    )(fn)


def _name(snapshotter: str | None) -> str:
    """The command's --snapshotter, else the group's."""
    return snapshotter or click.get_current_context().meta.get(_META_KEY, DEFAULT_SNAPSHOTTER)


def _service(g: Globals, snapshotter: str | None) -> Snapshots:
    return g.client().snapshots.with_snapshotter(_name(snapshotter))


def _gc_root_now() -> dict[str, str]:
    """The GC root label ctr puts on what it creates: the time, RFC 3339 in UTC."""
    return {GC_ROOT_LABEL: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def info_json(info: SnapshotInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "parent": info.parent,
        "kind": info.kind,
        "labels": info.labels,
        "created_at": rfc3339(info.created_at) if info.created_at else None,
        "updated_at": rfc3339(info.updated_at) if info.updated_at else None,
    }


def mounts_json(mounts: Iterable[Mount]) -> list[dict[str, Any]]:
    return [{"type": m.type, "source": m.source, "options": list(m.options)} for m in mounts]


def mount_commands(target: str, mounts: Iterable[Mount]) -> list[str]:
    """The shell commands that perform ``mounts`` on ``target``, worded as ctr prints them."""
    return [f"mount -t {m.type} {m.source} {target} -o {','.join(m.options)}" for m in mounts]


def ctr_size(n: int) -> str:
    """``4.0 KiB``: a size as ``ctr snapshots usage`` prints it (binary units, one decimal)."""
    size = float(n)
    unit = 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_UNITS[unit]}"


def tree_lines(infos: Iterable[SnapshotInfo]) -> list[str]:
    """``snapshots tree``: each root, then its children indented below it.

    Nodes keep the order the daemon listed them in, and a parent that is not
    listed (another snapshotter's, or filtered out) still shows as a root, as
    in ctr.
    """
    order: list[str] = []
    parents: dict[str, str] = {}
    children: dict[str, list[str]] = {}
    for info in infos:
        if info.name not in parents:
            order.append(info.name)
        parents[info.name] = info.parent
        children.setdefault(info.name, [])
        if info.parent:
            if info.parent not in parents:
                order.append(info.parent)
                parents[info.parent] = ""
                children.setdefault(info.parent, [])
            children[info.parent].append(info.name)
    lines: list[str] = []

    def walk(name: str, level: int) -> None:
        prefix = "  " * level + ("\\_" if level else "")
        lines.append(f"{prefix} {name}")
        for child in children[name]:
            walk(child, level + 1)

    for name in order:
        if not parents[name]:
            walk(name, 0)
    return lines


@snapshots.command("ls")
@_snapshotter_option
@quiet_option("snapshot keys")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(
    g: Globals, snapshotter: str | None, quiet: bool, fmt: str, filters: tuple[str, ...]
) -> None:
    """List snapshots.

    The table has ctr's columns: KEY, PARENT and KIND (View, Active or
    Committed). FILTERS use containerd's filter syntax over "name",
    "parent", "kind" and "labels.KEY"; a snapshot is shown if it matches any
    of them.

    \b
    Examples:
      berth snapshots ls
      berth snapshots --snapshotter native ls
      berth snapshots ls 'labels."containerd.io/gc.root"' --format json
    """
    items = _service(g, snapshotter).list(filters)
    if quiet:
        for info in items:
            click.echo(info.name)
    elif fmt == "json":
        echo_json([info_json(i) for i in items])
    else:
        echo_table(("KEY", "PARENT", "KIND"), ((i.name, i.parent, i.kind) for i in items))


@snapshots.command("info")
@_snapshotter_option
@click.argument("key")
@pass_globals
def info(g: Globals, snapshotter: str | None, key: str) -> None:
    """Show one snapshot as JSON.

    Prints the snapshot's name, parent, kind, labels and times (RFC 3339,
    UTC) as one JSON object.

    \b
    Examples:
      berth snapshots info sha256:3f53...
      berth snapshots info my-rootfs | jq .labels
    """
    echo_json(info_json(_service(g, snapshotter).stat(key)))


@snapshots.command("tree")
@_snapshotter_option
@pass_globals
def tree(g: Globals, snapshotter: str | None) -> None:
    """Show snapshots as a tree of parents and children.

    Each snapshot without a parent starts a tree; its children follow,
    indented and marked with \\_ (the layout of ctr snapshots tree).

    \b
    Examples:
      berth snapshots tree
      berth snapshots --snapshotter native tree
    """
    for line in tree_lines(_service(g, snapshotter).list()):
        click.echo(line)


def _show_mounts(target: str | None, as_json: bool, mounts: list[Mount]) -> None:
    if target:
        for line in mount_commands(target, mounts):
            click.echo(line)
    if as_json:
        echo_json(mounts_json(mounts))


_target_option = click.option(
    "--target",
    "-t",
    metavar="DIR",
    help="Print the mount commands that put the snapshot on DIR.",
)
_mounts_option = click.option(
    "--mounts", "as_json", is_flag=True, help="Print the snapshot's mounts as JSON."
)


@snapshots.command("prepare")
@_snapshotter_option
@_target_option
@_mounts_option
@click.argument("key")
@click.argument("parent", required=False, default="")
@pass_globals
def prepare(
    g: Globals,
    snapshotter: str | None,
    target: str | None,
    as_json: bool,
    key: str,
    parent: str,
) -> None:
    """Create an active (writable) snapshot.

    Prepares KEY on top of the committed snapshot PARENT (or empty without
    one) and labels it as a GC root, so it stays until removed. Nothing is
    mounted: print the mounts with --target or --mounts and mount them, or
    use `berth snapshots mounts` later.

    \b
    Examples:
      berth snapshots prepare scratch
      berth snapshots prepare --target /mnt/work work sha256:3f53...
      berth snapshots prepare --mounts work sha256:3f53... | jq .
    """
    mounts = _service(g, snapshotter).prepare(key, parent, labels=_gc_root_now())
    _show_mounts(target, as_json, mounts)


@snapshots.command("view")
@_snapshotter_option
@_target_option
@_mounts_option
@click.argument("key")
@click.argument("parent", required=False, default="")
@pass_globals
def view(
    g: Globals,
    snapshotter: str | None,
    target: str | None,
    as_json: bool,
    key: str,
    parent: str,
) -> None:
    """Create a read-only snapshot of a committed one.

    Views PARENT under the new key KEY. The view is labelled as a GC root
    (ctr leaves it unrooted), so it stays until removed. Print its mounts
    with --target or --mounts.

    \b
    Examples:
      berth snapshots view --target /mnt/ro look sha256:3f53...
    """
    mounts = _service(g, snapshotter).view(key, parent, labels=_gc_root_now())
    _show_mounts(target, as_json, mounts)


@snapshots.command("mounts")
@_snapshotter_option
@click.argument("target")
@click.argument("key")
@pass_globals
def mounts(g: Globals, snapshotter: str | None, target: str, key: str) -> None:
    """Print the mount commands for a snapshot.

    Prints one `mount -t TYPE SOURCE TARGET -o OPTIONS` line per mount of the
    active or view snapshot KEY, for a shell to run (as root). Committed
    snapshots have no mounts: view them first.

    \b
    Examples:
      berth snapshots mounts /mnt/work work
      berth snapshots mounts /mnt/work work | sh
    """
    for line in mount_commands(target, _service(g, snapshotter).mounts(key)):
        click.echo(line)


@snapshots.command("commit")
@_snapshotter_option
@click.argument("name")
@click.argument("key")
@pass_globals
def commit(g: Globals, snapshotter: str | None, name: str, key: str) -> None:
    """Commit an active snapshot under a new name.

    The active snapshot KEY becomes the committed, read-only snapshot NAME
    (labelled as a GC root); KEY is gone afterwards. Commit unmounts
    nothing: unmount KEY's mounts first.

    \b
    Examples:
      berth snapshots commit layer-1 work
    """
    _service(g, snapshotter).commit(name, key, labels=_gc_root_now())


@snapshots.command("rm")
@_snapshotter_option
@click.argument("keys", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, snapshotter: str | None, keys: tuple[str, ...]) -> None:
    """Remove snapshots.

    Removes each of KEYS in order and stops at the first that cannot be
    removed: one that does not exist, or still has children (remove a chain
    from the top).

    \b
    Examples:
      berth snapshots rm scratch
      berth snapshots rm top middle base
    """
    sn = _service(g, snapshotter)
    for key in keys:
        try:
            sn.remove(key)
        except errdefs.BerthError as exc:
            raise from_error(exc, prefix=f"failed to remove {errdefs.go_quote(key)}: ") from exc


@snapshots.command("diff")
@_snapshotter_option
@click.option(
    "--media-type",
    default="application/vnd.oci.image.layer.v1.tar+gzip",
    show_default=True,
    help="Media type of the layer to write (a gzip or an uncompressed tar).",
)
@click.option("--ref", default="", metavar="REF", help="Content ingest reference to write under.")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the layer in the content store (labelled as a GC root); remove it yourself.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label the layer blob (repeatable).",
)
@click.argument("id_a", metavar="IDA")
@click.argument("id_b", metavar="[IDB]", required=False)
@pass_globals
def diff(
    g: Globals,
    snapshotter: str | None,
    media_type: str,
    ref: str,
    keep: bool,
    labels: tuple[str, ...],
    id_a: str,
    id_b: str | None,
) -> None:
    """Write the difference between two snapshots as a layer, to stdout.

    With one snapshot, the layer holds IDA's changes over its parent; with
    two, the changes that turn IDA into IDB. Either may be active or
    committed. The layer is written through the daemon's Diff service into
    the content store, then streamed to standard output; without --keep it
    is garbage once the command ends.

    \b
    Examples:
      berth snapshots diff work > layer.tar.gz
      berth snapshots diff --media-type application/vnd.oci.image.layer.v1.tar base work | tar t
      berth snapshots diff --keep work > /dev/null   # keep the blob in the store
    """
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write a layer to a terminal; redirect it")
    blob_labels = parse_labels(labels, bare="true")
    if keep:
        blob_labels.update(_gc_root_now())
    c = g.client()
    with c.lease() as leased:
        sn = leased.snapshots.with_snapshotter(_name(snapshotter))
        if id_b is None:
            desc = sn.diff(id_a, media_type=media_type, ref=ref, labels=blob_labels)
        else:
            desc = sn.diff(id_b, against=id_a, media_type=media_type, ref=ref, labels=blob_labels)
        out = sys.stdout.buffer
        leased.content.get(desc.digest, out.write)
        out.flush()


@snapshots.command("usage")
@_snapshotter_option
@click.option("-b", "in_bytes", is_flag=True, help="Show sizes in bytes.")
@format_option
@click.argument("keys", nargs=-1)
@pass_globals
def usage(
    g: Globals, snapshotter: str | None, in_bytes: bool, fmt: str, keys: tuple[str, ...]
) -> None:
    """Show the disk space snapshots use.

    For each of KEYS (default: every snapshot) the space and inodes the
    snapshot uses itself, without its parents. Sizes are in binary units
    unless -b; JSON always gives bytes.

    \b
    Examples:
      berth snapshots usage
      berth snapshots usage -b work
    """
    sn = _service(g, snapshotter)
    names = list(keys) or [i.name for i in sn.list()]
    rows = [(name, sn.usage(name)) for name in names]
    if fmt == "json":
        echo_json([{"key": k, "size": u.size, "inodes": u.inodes} for k, u in rows])
        return
    echo_table(
        ("KEY", "SIZE", "INODES"),
        ((k, str(u.size) if in_bytes else ctr_size(u.size), str(u.inodes)) for k, u in rows),
    )


@snapshots.command("label")
@_snapshotter_option
@click.argument("key")
@click.argument("labels", nargs=-1)
@pass_globals
def label(g: Globals, snapshotter: str | None, key: str, labels: tuple[str, ...]) -> None:
    """Set or remove labels on a snapshot, and print its labels.

    LABELS are KEY=VALUE pairs; KEY= removes that label and a bare KEY means
    KEY=true (as with ctr). Other labels stay. Prints the snapshot's labels
    afterwards as k=v,k2=v2.

    \b
    Examples:
      berth snapshots label work owner=ci
      berth snapshots label work owner=
      berth snapshots label work
    """
    info = _service(g, snapshotter).label(key, parse_labels(labels, bare="true"))
    click.echo(label_string(info.labels))
