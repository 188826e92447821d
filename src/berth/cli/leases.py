"""``berth leases``: create, list and remove leases, the holds that keep work from GC."""

from __future__ import annotations

from datetime import timedelta

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._group import Group
from berth.cli._output import (
    DURATION,
    echo_json,
    echo_table,
    format_option,
    label_string,
    parse_labels,
    quiet_option,
    rfc3339,
)


@click.group(
    "leases",
    cls=Group,
    aliases={"list": "ls", "remove": "rm", "delete": "rm", "del": "rm"},
)
def leases() -> None:
    """Manage leases.

    A lease protects resources (content, ingests, snapshots) from garbage
    collection while work such as a pull is in progress. Clients create one,
    attach it to their requests, and delete it when done. A lease with an
    expiry (label containerd.io/gc.expire) stops protecting anything once it
    has expired, so a crashed client cannot pin resources forever. Leases
    live in the namespace chosen with -n.
    """


@leases.command("create")
@click.option("--id", "lease_id", metavar="ID", help="The lease's id. Default: a generated one.")
@click.option(
    "--expires",
    "-x",
    type=DURATION,
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long until the lease expires, e.g. 30m or 1h; 0 means never.",
)
@click.argument("labels", nargs=-1)
@pass_globals
def create(g: Globals, lease_id: str | None, expires: timedelta, labels: tuple[str, ...]) -> None:
    """Create a lease.

    Creates a lease in the namespace chosen with -n and prints its id.
    LABELS are KEY=VALUE pairs stored on the lease; a bare KEY means an
    empty value (as with ctr).

    \b
    Examples:
      berth leases create
      berth leases create --id build-42 --expires 1h owner=ci
      berth -n build leases create -x 0 pinned=true
    """
    lease = g.client().leases.create(
        lease_id, expires=expires, labels=parse_labels(labels, bare="")
    )
    click.echo(lease.id)


@leases.command("ls")
@quiet_option("lease ids")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List leases.

    Lists the leases in the namespace chosen with -n. FILTERS use
    containerd's filter syntax over the fields "id" and "labels.KEY"; a
    lease is shown if it matches any of them. The table has ctr's columns:
    ID, CREATED AT (local time) and LABELS.

    \b
    Examples:
      berth leases ls
      berth leases ls 'labels."owner"==ci'
      berth leases ls --format json | jq -r '.[].id'
    """
    items = g.client().leases.list(filters)
    if quiet:
        for le in items:
            click.echo(le.id)
    elif fmt == "json":
        echo_json(
            [
                {"id": le.id, "created_at": rfc3339(le.created_at), "labels": le.labels}
                for le in items
            ]
        )
    else:
        echo_table(
            ("ID", "CREATED AT", "LABELS"),
            (
                (le.id, rfc3339(le.created_at, local=True), label_string(le.labels, empty="-"))
                for le in items
            ),
        )


@leases.command("rm")
@click.option(
    "--sync",
    is_flag=True,
    help="Wait until the daemon has collected what only the last lease held.",
)
@click.argument("ids", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, sync: bool, ids: tuple[str, ...]) -> None:
    """Delete leases.

    Deletes each lease named by IDS, printing its id as it goes; whatever
    only that lease held becomes garbage. Stops at the first lease that
    cannot be deleted, such as one that does not exist.

    \b
    Examples:
      berth leases rm build-42
      berth leases rm --sync $(berth leases ls -q)
    """
    c = g.client()
    for i, lease_id in enumerate(ids):
        # As ctr does, only the last deletion waits for garbage collection.
        c.leases.delete(lease_id, sync=sync and i == len(ids) - 1)
        click.echo(lease_id)
