"""How ``berth`` reports failure: one ``berth: <message>`` line, a hint, an exit code.

Exit codes: 0 success, 1 the operation failed (the daemon said no, or could
not be reached), 2 the command line itself was wrong (click's usage errors),
130 interrupted.
"""

from __future__ import annotations

import click

from berth import errdefs

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Failure(click.ClickException):
    """A failed operation, rendered as ``berth: message`` plus an optional hint."""

    exit_code = EXIT_FAILURE

    def __init__(
        self, message: str, *, hint: str | None = None, cause: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.hint = hint
        self.cause = cause
        self.debug = False

    def show(self, file: object = None) -> None:
        if self.debug and self.cause is not None:
            import traceback  # only for --debug: it is slow to import

            tb = "".join(traceback.format_exception(self.cause))
            click.echo(tb.rstrip(), err=True)
        click.echo(f"berth: {self.message}", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


def hint_for(exc: errdefs.BerthError) -> str | None:
    """What a person can do about an error, where there is something general to say."""
    if isinstance(exc, errdefs.Unavailable):
        return "is berthd running? start it with `berthd` or pass --address"
    if isinstance(exc, errdefs.DeadlineExceeded):
        return "berthd did not answer in time; raise --timeout or check berthd's log"
    if isinstance(exc, errdefs.NotImplemented):
        return "this daemon does not offer that; `berth plugins ls` shows what it runs"
    return None


def from_error(exc: errdefs.BerthError, *, prefix: str = "", hint: str | None = None) -> Failure:
    """The Failure to show for an SDK error; ``hint`` overrides the general one."""
    text = str(exc) or type(exc).__name__
    return Failure(prefix + text, hint=hint or hint_for(exc), cause=exc)
