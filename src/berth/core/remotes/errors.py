"""Errors of the registry client, all within :mod:`berth.errdefs`.

::

    errdefs.BerthError
    ├── RegistryError                 an HTTP exchange went wrong (UNKNOWN)
    │   ├── Unauthorized              401: no or wrong credentials
    │   ├── Forbidden                 403: credentials lack the permission
    │   └── UnexpectedStatus          any other status we cannot act on
    ├── errdefs.NotFound              manifest, tag or blob absent (404)
    ├── errdefs.Unavailable
    │   └── RegistryUnavailable       5xx/429/timeouts still failing after retries
    ├── errdefs.InvalidArgument       bad reference, document, media type, size
    └── errdefs.FailedPrecondition    content does not match its digest/size

containerd reports authorisation failures as plain (UNKNOWN) errors; so do
we, with a message that names the host and says how to pass credentials.
Messages never contain credentials or tokens.
"""

from __future__ import annotations

from berth import errdefs


class RegistryError(errdefs.BerthError):
    """A registry answered in a way the client cannot act on."""

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class Unauthorized(RegistryError):
    """The registry wants credentials we do not have, or refused ours."""


class Forbidden(RegistryError):
    """The registry knows who we are and refuses the operation."""


class UnexpectedStatus(RegistryError):
    """An HTTP status outside what the operation expects."""


class RegistryUnavailable(errdefs.Unavailable):
    """Transient failures (5xx, 429, timeouts) outlasted the retry budget."""

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (task groups wrap what a task raised).

    Pipelines run many transfers in task groups but report one error: the
    first that happened, so callers can match on the usual error classes.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
