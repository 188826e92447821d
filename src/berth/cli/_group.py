"""A click group with command aliases and lazily imported subcommands."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class Group(click.Group):
    """A group whose subcommands may live in modules imported on first use.

    ``lazy`` maps a command name to ``"module:attribute"``; the module is
    imported only when that command is run, asked for help, or listed.
    ``aliases`` maps extra names to canonical ones (``ns`` -> ``namespaces``);
    help lists them next to the command.
    """

    def __init__(
        self,
        *args: Any,
        lazy: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = dict(lazy or {})
        self.aliases: dict[str, str] = dict(aliases or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = self.aliases.get(cmd_name, cmd_name)
        if name not in self.commands and name in self.lazy:
            self.add_command(self._load(name), name)
        return self.commands.get(name)

    def _load(self, name: str) -> click.Command:
        module, _, attr = self.lazy[name].partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.lazy[name]} is {type(cmd).__name__}, not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        by_target: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            by_target.setdefault(target, []).append(alias)
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            label = ", ".join([name, *sorted(by_target.get(name, ()), key=len)])
            rows.append((label, cmd.get_short_help_str(limit=formatter.width - 30)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
