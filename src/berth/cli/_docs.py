"""Render the ``berth`` command tree as Markdown: the source of docs/cli.md.

Regenerate the page after changing any command or help text:

    .venv/bin/python -m berth.cli._docs > docs/cli.md

``tests/unit/test_cli_docs.py`` fails while the page and the commands disagree,
so the reference can never describe a CLI that no longer exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from berth.cli.main import cli

WIDTH = 80

INTRO = """\
# berth command reference

`berth` is Berth's command-line client. It speaks containerd 1.6's gRPC API
through the Python SDK (`berth.client`), so it drives `berthd` and also a real
containerd. Its commands mirror `ctr`'s, and every listing command also takes
`--format json` for scripts.

This page is generated from the commands' own help by
`python -m berth.cli._docs > docs/cli.md`; `berth COMMAND --help` prints the
same text.

## Conventions

- **Daemon address**: `--address/-a`, else `$BERTH_ADDRESS`, else
  `$CONTAINERD_ADDRESS`, else `/run/berth/berth.sock`.
- **Namespace**: `--namespace/-n`, else `$CONTAINERD_NAMESPACE`, else `default`.
- **Durations** (`--timeout`, `leases create --expires`): Go syntax such as
  `500ms`, `30s`, `1h30m`, or a plain number of seconds.
- **Labels**: `KEY=VALUE` arguments. A bare `KEY` means `KEY=true` for
  namespaces and an empty value for leases, exactly as with `ctr`.
- **Filters**: containerd's filter syntax, e.g. `type==io.containerd.grpc.v1`,
  `labels."owner"==ci`, `id~=^tmp-`. Within one filter `,` means AND; several
  filter arguments are OR-ed.
- **Output**: tables for people (`--format table`, the default) and JSON for
  scripts (`--format json`); `-q` prints only identifiers, one per line.
- **Errors** go to stderr as one line `berth: <message>`, sometimes followed by
  `hint: <what to do>`.
- **Exit codes**: `0` success; `1` the operation failed (the daemon refused, or
  could not be reached); `2` the command line was wrong (unknown command or
  option, missing argument, malformed value); `130` interrupted.
"""


def _walk(cmd: click.Command, name: str, parent: click.Context | None) -> Iterator[tuple[str, str]]:
    settings = {**cmd.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(cmd, info_name=name, parent=parent, **settings)
    yield ctx.command_path, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for sub in cmd.list_commands(ctx):
            child = cmd.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from _walk(child, sub, ctx)


def render() -> str:
    """docs/cli.md's full text."""
    parts = [INTRO]
    for path, text in _walk(cli, "berth", None):
        level = "#" * min(2 + path.count(" "), 4)
        parts.append(f"{level} `{path}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
