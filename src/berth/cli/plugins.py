"""``berth plugins``: what the daemon loaded, and how each plugin fared."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._group import Group
from berth.cli._output import echo_json, echo_table, format_option, quiet_option

if TYPE_CHECKING:
    from berth.client.types import Plugin


@click.group("plugins", cls=Group, aliases={"list": "ls"})
def plugins() -> None:
    """Inspect the daemon's plugins.

    Every service, store and runtime in the daemon is a plugin with a type
    (e.g. io.containerd.grpc.v1) and an id. A plugin that failed to start is
    still listed, with status "error" (or "skip" when it chose not to load).
    """


def _platforms(p: Plugin) -> str:
    return ",".join(sorted({str(x) for x in p.platforms})) or "-"


def _plugin_json(p: Plugin) -> dict[str, Any]:
    return {
        "type": p.type,
        "id": p.id,
        "requires": list(p.requires),
        "platforms": sorted({str(x) for x in p.platforms}),
        "exports": dict(p.exports),
        "capabilities": list(p.capabilities),
        "status": p.status,
        "error": (
            {"code": p.init_error.code, "message": p.init_error.message}
            if p.init_error is not None
            else None
        ),
    }


def _detailed(items: list[Plugin]) -> None:
    # The same fields, in the same order, as `ctr plugins ls --detailed`.
    blocks = []
    for p in items:
        lines = [f"Type:          {p.type}", f"ID:            {p.id}"]
        if p.requires:
            lines.append("Requires:")
            lines += [f"               {r}" for r in p.requires]
        if p.platforms:
            lines.append(f"Platforms:     {_platforms(p)}")
        if p.exports:
            lines.append("Exports:")
            lines += [f"               {k}  {v}" for k, v in sorted(p.exports.items())]
        if p.capabilities:
            lines.append(f"Capabilities:  {','.join(p.capabilities)}")
        if p.init_error is not None:
            lines.append("Error:")
            lines.append(f"               Code:     {p.init_error.code}")
            lines.append(f"               Message:  {p.init_error.message}")
        blocks.append("\n".join(lines))
    if blocks:
        click.echo("\n\n".join(blocks))


@plugins.command("ls")
@quiet_option("plugin ids")
@click.option("--detailed", "-d", is_flag=True, help="Print everything known about each plugin.")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(g: Globals, quiet: bool, detailed: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List plugins.

    Lists the daemon's plugins in the order they were loaded. FILTERS use
    containerd's filter syntax over the fields "type" and "id"; a plugin is
    shown if it matches any of them. The table has the same columns as
    `ctr plugins ls`: TYPE, ID, PLATFORMS and STATUS (ok, skip or error).
    --detailed adds requirements, exports, capabilities and the init error,
    if any.

    \b
    Examples:
      berth plugins ls
      berth plugins ls type==io.containerd.grpc.v1
      berth plugins ls -d id==overlayfs
      berth plugins ls --format json | jq -r '.[] | select(.status != "ok") | .id'
    """
    items = g.client().plugins(filters)
    if quiet:
        for p in items:
            click.echo(p.id)
    elif fmt == "json":
        echo_json([_plugin_json(p) for p in items])
    elif detailed:
        _detailed(items)
    else:
        echo_table(
            ("TYPE", "ID", "PLATFORMS", "STATUS"),
            ((p.type, p.id, _platforms(p), p.status) for p in items),
            padding=4,
        )
