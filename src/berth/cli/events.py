"""``berth events``: follow the daemon's event stream, as ``ctr events`` does."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._output import rfc3339

if TYPE_CHECKING:
    from berth.client._core import Event

FORMATS = ("text", "json")


def go_time(moment: datetime) -> str:
    """A UTC timestamp in Go's ``time.Time.String`` layout, which ctr prints.

    ``2024-05-01 12:00:00.5 +0000 UTC``: the fraction loses trailing zeros and
    disappears when zero. (Go shows nanoseconds; a datetime holds microseconds.)
    """
    t = moment.astimezone(UTC)
    text = t.strftime("%Y-%m-%d %H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + " +0000 UTC"


def payload_json(event: Event) -> Any:
    """The event's payload as JSON-ready data; a type berth cannot decode is shown
    by its type URL and base64 bytes rather than dropped."""
    if event.payload is not None:
        return event.payload
    if event.type_url:
        return {"@type": event.type_url, "value": base64.b64encode(event.raw).decode()}
    return None


def text_line(event: Event) -> str:
    """``TIMESTAMP NAMESPACE TOPIC {json}``: ctr's line for one event."""
    data = payload_json(event)
    body = "" if data is None else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{go_time(event.timestamp)} {event.namespace} {event.topic} {body}"


def json_line(event: Event) -> str:
    """One event as a single-line JSON object (a JSON Lines stream)."""
    return json.dumps(
        {
            "timestamp": rfc3339(event.timestamp),
            "namespace": event.namespace,
            "topic": event.topic,
            "type": event.type_url,
            "event": payload_json(event),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


@click.command("events")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: ctr's line format; json: one JSON object per line.",
)
@click.argument("filters", nargs=-1)
@pass_globals
def events(g: Globals, fmt: str, filters: tuple[str, ...]) -> None:
    """Print the daemon's events as they happen.

    Follows the daemon's event stream until interrupted (Ctrl-C), printing
    one line per event: its time, namespace, topic and payload as JSON, the
    same lines `ctr events` prints. Events from every namespace are shown;
    -n does not narrow them, a filter does.

    FILTERS use containerd's filter syntax over the fields "topic",
    "namespace" and "event.FIELD" (a field of the payload, such as
    event.container_id or event.name); an event is shown if it matches any
    of them.

    \b
    Examples:
      berth events
      berth events 'topic~="^/images/"'
      berth events 'namespace==k8s.io,topic=="/tasks/exit"'
      berth events --format json 'event.container_id==web' | jq .event
    """
    render = json_line if fmt == "json" else text_line
    with g.client().events.subscribe(filters) as stream:
        for event in stream:
            click.echo(render(event))
