"""``berth version``: the client's and the daemon's versions, and the daemon's UUID."""

from __future__ import annotations

import platform

import click

import berth
from berth.cli._context import Globals, pass_globals
from berth.cli._output import echo_json, format_option


@click.command("version")
@format_option
@pass_globals
def version(g: Globals, fmt: str) -> None:
    """Print the client and server versions.

    Shows berth's own version, then asks the daemon at --address for its
    version, revision and UUID (the identity it keeps across restarts). The
    client part is printed even when the daemon cannot be reached, so the
    command also tells you which berth you are running.

    \b
    Examples:
      berth version
      berth version --format json | jq -r .server.uuid
    """
    client_info = {"version": berth.__version__, "python": platform.python_version()}
    if fmt == "table":
        click.echo("Client:")
        click.echo(f"  Version:  {client_info['version']}")
        click.echo(f"  Python:   {client_info['python']}")
        click.echo("")
    c = g.client()
    v = c.version()
    uuid = c.server_uuid()
    if fmt == "json":
        echo_json(
            {
                "client": client_info,
                "server": {"version": v.version, "revision": v.revision, "uuid": uuid},
            }
        )
        return
    click.echo("Server:")
    click.echo(f"  Version:  {v.version}")
    click.echo(f"  Revision: {v.revision}")
    click.echo(f"  UUID:     {uuid}")
