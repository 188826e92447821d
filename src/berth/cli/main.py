"""``berth``: the root command, its global options, and the table of command groups.

To add a command group: write ``berth/cli/<group>.py`` defining a click command
or group, add one line to ``COMMANDS`` (and any aliases to ``ALIASES``), and
regenerate docs/cli.md with ``python -m berth.cli.docs > docs/cli.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

import berth
from berth import errdefs
from berth.cli import _errors
from berth.cli._context import Globals
from berth.cli._group import Group
from berth.cli._output import DURATION
from berth.client import _config

#: Command name -> "module:attribute", imported only when the command is used.
COMMANDS: dict[str, str] = {
    "version": "berth.cli.version:version",
    "plugins": "berth.cli.plugins:plugins",
    "namespaces": "berth.cli.namespaces:namespaces",
    "leases": "berth.cli.leases:leases",
    "images": "berth.cli.images:images",
    "content": "berth.cli.content:content",
    "events": "berth.cli.events:events",
    "containers": "berth.cli.containers:containers",
    "snapshots": "berth.cli.snapshots:snapshots",
    "run": "berth.cli.run:run",
    "tasks": "berth.cli.tasks:tasks",
}

#: Extra names, as ctr accepts them.
ALIASES: dict[str, str] = {
    "plugin": "plugins",
    "namespace": "namespaces",
    "ns": "namespaces",
    "lease": "leases",
    "image": "images",
    "i": "images",
    "event": "events",
    "container": "containers",
    "c": "containers",
    "snapshot": "snapshots",
    "task": "tasks",
    "t": "tasks",
}

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}


class RootGroup(Group):
    """The root command: turns SDK errors into ``berth: ...`` failures."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errdefs.BerthError as exc:
            failure = _errors.from_error(exc)
            failure.debug = _debugging(ctx)
            raise failure from exc
        except _errors.Failure as failure:
            failure.debug = _debugging(ctx)
            raise


def _debugging(ctx: click.Context) -> bool:
    g = ctx.find_object(Globals)
    return bool(g and g.debug)


@click.group(
    "berth",
    cls=RootGroup,
    lazy=COMMANDS,
    aliases=ALIASES,
    context_settings=CONTEXT_SETTINGS,
)
@click.option(
    "--address",
    "-a",
    envvar=list(_config.ADDRESS_ENV),
    default=_config.DEFAULT_ADDRESS,
    show_default=True,
    show_envvar=True,
    metavar="PATH",
    help="berthd's socket (containerd's works too).",
)
@click.option(
    "--namespace",
    "-n",
    envvar=_config.NAMESPACE_ENV,
    default=_config.DEFAULT_NAMESPACE,
    show_default=True,
    show_envvar=True,
    help="Namespace to work in.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Deadline for each request to the daemon, e.g. 10s or 1m30s. Default: none.",
)
@click.option("--debug", is_flag=True, help="Log requests and show tracebacks on errors.")
@click.version_option(
    berth.__version__, "--version", prog_name="berth", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context, address: str, namespace: str, timeout: Any, debug: bool) -> None:
    """Manage containers, images and namespaces on a berthd (or containerd) daemon.

    berth talks to the daemon's gRPC API, the same API containerd 1.6 serves,
    so it works against either. Every command runs in one namespace (-n), as
    with ctr.

    \b
    Examples:
      berth version
      berth plugins ls
      berth -n build ns create build team=ci
      berth --address /run/containerd/containerd.sock ns ls

    Run `berth COMMAND --help` for what each command does.
    """
    if debug:
        import logging  # only here: it is a noticeable share of startup time

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    seconds = timeout.total_seconds() if timeout is not None else None
    ctx.obj = Globals(address=address, namespace=namespace, timeout=seconds or None, debug=debug)


def run(argv: Sequence[str] | None = None) -> int:
    """Run berth with ``argv`` (default: sys.argv[1:]) and return the exit code."""
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", None)
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None, prog_name="berth", standalone_mode=False
        )
    except click.exceptions.UsageError as exc:
        if no_args_help is not None and isinstance(exc, no_args_help):
            # Bare `berth` or `berth ns`: show help, as ctr does, and succeed.
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            return 0
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        click.echo(f"berth: {exc.format_message()}", err=True)
        return _errors.EXIT_USAGE
    except _errors.Failure as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("berth: interrupted", err=True)
        return _errors.EXIT_INTERRUPTED
    except click.ClickException as exc:
        click.echo(f"berth: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("berth: interrupted", err=True)
        return _errors.EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else 0


def main() -> NoReturn:
    """Console-script entry point: run, flush, and leave without interpreter teardown."""
    try:
        code = run()
    except SystemExit as exc:  # a command's own sys.exit(code)
        code = _exit_code(exc.code)
    _leave(code)


def _exit_code(value: object) -> int:
    # What the interpreter makes of SystemExit's argument.
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _leave(code: int) -> NoReturn:
    """Exit with ``code`` now, as the interpreter would but about 25 ms sooner.

    By the time a command returns it has done its own cleanup in ``finally``
    blocks and context exits: the client is closed, the terminal mode
    restored, FIFO directories removed, the output threads joined. What
    interpreter teardown would still do is flush the standard streams, run
    atexit handlers, wait for non-daemon threads, then tear down every module
    and gRPC's core, which costs time and achieves nothing here. So the first
    three are done here, and the teardown skipped with ``os._exit``. A
    non-daemon thread still alive means someone is still working: then the
    ordinary exit path waits for it.
    """
    import atexit
    import os
    import threading

    main = threading.main_thread()
    if any(t is not main and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = 120  # what the interpreter exits with when it cannot flush
    os._exit(code & 0xFF)  # as exit(3) truncates a status


if __name__ == "__main__":
    main()
