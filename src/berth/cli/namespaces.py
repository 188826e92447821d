"""``berth namespaces`` (alias ``ns``): create, list, label and remove namespaces."""

from __future__ import annotations

import click

from berth import errdefs
from berth.cli import _errors
from berth.cli._context import Globals, pass_globals
from berth.cli._group import Group
from berth.cli._output import (
    echo_json,
    echo_table,
    format_option,
    label_string,
    parse_labels,
    quiet_option,
)


@click.group(
    "namespaces",
    cls=Group,
    aliases={"list": "ls", "c": "create", "remove": "rm", "delete": "rm", "del": "rm"},
)
def namespaces() -> None:
    """Manage namespaces.

    A namespace isolates everything in the daemon: images, containers,
    content, snapshots and leases in one namespace are invisible from the
    others. Namespaces carry labels (key=value). The global -n option (or
    $CONTAINERD_NAMESPACE) chooses the namespace other commands work in;
    commands that create objects create the namespace on first use.
    """


@namespaces.command("ls")
@quiet_option("namespace names")
@format_option
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str) -> None:
    """List namespaces.

    Prints every namespace with its labels, sorted by name, in the same
    columns as `ctr namespaces ls`: NAME and LABELS.

    \b
    Examples:
      berth ns ls
      berth ns ls -q
      berth ns ls --format json | jq -r '.[].name'
    """
    items = g.client().namespaces.list()
    if quiet:
        for ns in items:
            click.echo(ns.name)
    elif fmt == "json":
        echo_json([{"name": ns.name, "labels": ns.labels} for ns in items])
    else:
        echo_table(("NAME", "LABELS"), ((ns.name, label_string(ns.labels)) for ns in items))


@namespaces.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1)
@pass_globals
def create(g: Globals, name: str, labels: tuple[str, ...]) -> None:
    """Create a namespace.

    Creates the namespace NAME, optionally with LABELS. NAME must be unique
    and follow containerd's identifier rules: letters and digits, optionally
    joined by single '.', '_' or '-', at most 76 characters. Each label is
    KEY=VALUE; a bare KEY means KEY=true (as with ctr).

    \b
    Examples:
      berth ns create build
      berth ns create build team=ci tier=gold
    """
    g.client().namespaces.create(name, parse_labels(labels, bare="true"))


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1)
@pass_globals
def label(g: Globals, name: str, labels: tuple[str, ...]) -> None:
    """Set or clear a namespace's labels.

    Changes the labels of the namespace NAME. Each label is KEY=VALUE; KEY=
    (an empty value) removes the label, and a bare KEY means KEY=true (as
    with ctr). Labels not named are left as they are.

    \b
    Examples:
      berth ns label build tier=silver
      berth ns label build team=
    """
    g.client().namespaces.label(name, parse_labels(labels, bare="true"))


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, names: tuple[str, ...]) -> None:
    """Remove namespaces.

    Removes each of the namespaces NAMES. A namespace must be empty to be
    removed: the daemon refuses while it still holds images, containers,
    content, snapshots or leases, and says which. Each name removed (or
    already absent, which ctr also treats as removed) is printed. After a
    failure the command goes on to the next name, and exits 1 at the end.

    \b
    Examples:
      berth ns rm build
      berth ns rm $(berth ns ls -q | grep ^tmp-)
    """
    c = g.client()
    failed = False
    for name in names:
        try:
            c.namespaces.delete(name)
        except errdefs.NotFound:
            pass
        except errdefs.Unavailable:
            # No point trying the other names.
            raise
        except errdefs.FailedPrecondition as exc:
            failed = True
            _errors.from_error(
                exc,
                prefix=f"unable to delete {name}: ",
                hint=f"remove what it still holds first (e.g. `berth -n {name} leases ls`)",
            ).show()
            continue
        except errdefs.BerthError as exc:
            failed = True
            _errors.from_error(exc, prefix=f"unable to delete {name}: ").show()
            continue
        click.echo(name)
    if failed:
        raise click.exceptions.Exit(_errors.EXIT_FAILURE)
