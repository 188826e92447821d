"""The global options of ``berth`` and the one SDK client a command uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from berth.client import Client


@dataclass
class Globals:
    """What the root command's options decided, shared with every subcommand."""

    address: str
    namespace: str
    timeout: float | None = None
    debug: bool = False
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        """The SDK client for this invocation, connected on first use.

        gRPC is imported here, not at module level, so that help and usage
        errors never pay for it.
        """
        if self._client is None:
            from berth.client import Client

            self._client = Client(self.address, namespace=self.namespace, timeout=self.timeout)
            click.get_current_context().find_root().call_on_close(self._client.close)
        return self._client


pass_globals = click.make_pass_decorator(Globals)
