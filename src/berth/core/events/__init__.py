"""Event publishing seam: what domain services call to announce a change.

This module owns only the interface. Services publish through
:func:`publisher`, which returns whatever exchange the daemon installed with
:func:`set_publisher`; until then events are dropped. The real exchange
(fan-out to ``Subscribe`` streams, forwarding from shims) lives in
:mod:`berth.core.events.exchange`, and the protobuf ``Any``/type-URL codec it
uses in :mod:`berth.core.events.typeurl`; the events plugin
(:mod:`berth.services.events`) installs it here at boot.

``event`` is a containerd event payload (``berth.api.events.*_pb2`` message);
this module does not look inside it, so it stays free of protobuf imports.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullPublisher", "Publisher", "publisher", "set_publisher"]


class Publisher(Protocol):
    """Anything that accepts events for a namespace and topic."""

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        """Deliver ``event`` under ``topic`` (e.g. ``/images/create``).

        Must not block the event loop; slow subscribers are the exchange's
        problem, never the publisher's.
        """
        ...


class NullPublisher:
    """Drops every event: the default until an exchange is installed."""

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        return None


_current: Publisher = NullPublisher()


def publisher() -> Publisher:
    """The installed exchange (a :class:`NullPublisher` by default).

    Look it up at publish time rather than caching it, so that an exchange
    installed after a service started is still used.
    """
    return _current


def set_publisher(p: Publisher | None) -> None:
    """Install ``p`` as the exchange; None restores the no-op default."""
    global _current
    _current = p if p is not None else NullPublisher()
