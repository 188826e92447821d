"""The ``io.containerd.event.v1.exchange`` plugin: the daemon's one event exchange.

Loading it installs the exchange as the process-wide publisher
(:func:`berth.core.events.set_publisher`), so every service's
``events.publisher().publish(...)`` reaches subscribers from then on. It
requires nothing, so it loads before the plugins that publish (metadata lists
it among its requirements, as in containerd). Closing it ends every
subscription and puts the no-op publisher back.
"""

from __future__ import annotations

from berth import plugin
from berth.core import events
from berth.core.events.exchange import Exchange

EXCHANGE_ID = "exchange"


def _init(ic: plugin.InitContext) -> Exchange:
    exchange = Exchange()
    events.set_publisher(exchange)
    return exchange


def _close(exchange: Exchange) -> None:
    exchange.close()
    if events.publisher() is exchange:
        events.set_publisher(None)


plugin.register(plugin.Registration(type=plugin.EVENT, id=EXCHANGE_ID, init=_init, close=_close))
