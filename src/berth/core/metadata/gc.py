"""Garbage collection: mark-and-sweep over the metadata graph, and its scheduler.

Design notes
------------
The graph is containerd's. Nodes are ``(kind, namespace, key)``; a kind is a
table of resources (``content`` blobs, ``ingest`` records, ``lease`` records,
and later ``snapshot`` keys as ``<snapshotter>/<key>`` and containers). Edges
come from labels -- ``containerd.io/gc.ref.content[.<name>|/<name>]`` points at
a digest, ``containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`` at a
snapshot key -- plus a few structural ones (an image's target, an ingest's
expected digest, a snapshot's parent).

Roots are every image, every live lease's resources, unexpired ingests, and
any object labelled ``containerd.io/gc.root``.

Every resource type joins the collector through one small interface,
:class:`ResourceKind`: it names its roots, its outgoing references, its
candidates for deletion, how to remove one, and an optional ``cleanup`` that
runs after the metadata sweep (where backing storage -- blob files, snapshot
directories -- is reclaimed outside the database lock). The snapshots and
containers subsystems register their kinds on the same :class:`Collector`
without the marking or sweeping code changing. An edge to a kind nobody
registered is a dead edge: it is marked and ignored, as containerd ignores
edges to missing objects.

Marking and sweeping of metadata happen in one SQLite write transaction, so no
writer can add a reference between the two; that is the role containerd's
``wlock`` plays. Backing storage is reclaimed afterwards by each dirty kind's
``cleanup``; kinds that need to exclude concurrent writers during that phase
(the content store does) bring their own lock.

The :class:`Scheduler` decides *when* to collect, with containerd's knobs
(``pause_threshold``, ``deletion_threshold``, ``mutation_threshold``,
``schedule_delay``, ``startup_delay``). Stores report each committed write via
:meth:`Collector.mutated`; deletions make a collection due, plain mutations only
count towards ``mutation_threshold``. ``schedule_and_wait`` forces a
collection, which is what ``sync`` deletes and tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from berth.core.metadata.db import DB

log = logging.getLogger("berth.gc")

LABEL_ROOT = "containerd.io/gc.root"
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."

# Kind names used by the built-in resource kinds.
CONTENT = "content"
INGEST = "ingest"
LEASE = "lease"
IMAGE = "image"
SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class Node:
    """One resource in the graph. Snapshot keys are ``<snapshotter>/<key>``."""

    kind: str
    namespace: str
    key: str


class ResourceKind(Protocol):
    """How one kind of resource takes part in collection.

    All methods except ``cleanup`` run inside the collector's write
    transaction on ``cur`` and must only touch the database: they are called
    with the database lock held, so cost is what every other writer waits for.
    """

    name: str

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterable[Node]:
        """Nodes (of any kind) that are live because of this kind's records."""
        ...

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterable[Node]:
        """Nodes that ``node`` (of this kind) keeps alive. Missing node: nothing."""
        ...

    def candidates(self, cur: sqlite3.Cursor) -> Iterable[Node]:
        """Every node of this kind that may be removed when unmarked."""
        ...

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        """Delete the record of an unreachable ``node``."""
        ...

    def cleanup(self) -> None:
        """Reclaim backing storage after a sweep removed records of this kind
        (or after the kind marked itself dirty). Runs outside the database
        lock, on the collector's thread. Errors are logged, not raised."""
        ...


def label_refs(namespace: str, lbls: Mapping[str, str]) -> Iterator[Node]:
    """The references a label set carries, by containerd's naming rules.

    ``containerd.io/gc.ref.content`` alone, or followed by ``.`` or ``/`` and
    any name, refers to the digest in its value; other suffixes are not
    references. ``containerd.io/gc.ref.snapshot.<snapshotter>`` (optionally
    ``/<name>``) refers to the snapshot key in its value.
    """
    for key in sorted(lbls):
        value = lbls[key]
        if key.startswith(LABEL_REF_CONTENT):
            rest = key[len(LABEL_REF_CONTENT) :]
            if rest == "" or rest[0] in "./":
                yield Node(CONTENT, namespace, value)
        elif key.startswith(LABEL_REF_SNAPSHOT):
            snapshotter = key[len(LABEL_REF_SNAPSHOT) :].split("/", 1)[0]
            yield Node(SNAPSHOT, namespace, f"{snapshotter}/{value}")


def is_root(lbls: Mapping[str, str]) -> bool:
    """Whether labels mark an object as a GC root (any value counts)."""
    return LABEL_ROOT in lbls


_FRACTION = re.compile(r"\.(\d+)")


def parse_expiry(value: str) -> datetime | None:
    """Parse a ``containerd.io/gc.expire`` value (RFC 3339); None if invalid."""
    text = value.strip()
    # Go may write up to nine fractional digits; Python accepts six.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # RFC 3339 requires an offset
    return parsed


def load_labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    result: dict[str, str] = json.loads(text)
    return result


class LeaseKind:
    """Leases: live ones make their resources roots; expired ones are removed.

    Resource types follow containerd: ``content`` (digest), ``ingests`` (ref)
    and ``snapshots/<snapshotter>`` (key).
    """

    name = LEASE

    def roots(self, cur: sqlite3.Cursor, now: datetime) -> Iterator[Node]:
        live: set[tuple[str, str]] = set()
        for row in cur.execute("SELECT namespace, id, labels FROM leases"):
            lbls = load_labels(row["labels"])
            exp_text = lbls.get(LABEL_EXPIRE)
            if exp_text is not None:
                expiry = parse_expiry(exp_text)
                if expiry is None:
                    log.info(
                        "ignoring invalid lease expiration",
                        extra={"fields": {"lease": row["id"], "value": exp_text}},
                    )
                elif expiry < now:
                    continue  # expired: protects nothing, and is itself swept
            live.add((row["namespace"], row["id"]))
        for ns, lease_id in sorted(live):
            yield Node(LEASE, ns, lease_id)
        for row in cur.execute("SELECT namespace, lease, type, id FROM lease_resources").fetchall():
            if (row["namespace"], row["lease"]) not in live:
                continue
            rtype, rid, ns = row["type"], row["id"], row["namespace"]
            if rtype == "content":
                yield Node(CONTENT, ns, rid)
            elif rtype == "ingests":
                yield Node(INGEST, ns, rid)
            elif rtype.startswith("snapshots/"):
                yield Node(SNAPSHOT, ns, f"{rtype.removeprefix('snapshots/')}/{rid}")

    def references(self, cur: sqlite3.Cursor, node: Node) -> Iterable[Node]:
        return ()

    def candidates(self, cur: sqlite3.Cursor) -> Iterator[Node]:
        for row in cur.execute("SELECT namespace, id FROM leases").fetchall():
            yield Node(LEASE, row["namespace"], row["id"])

    def remove(self, cur: sqlite3.Cursor, node: Node) -> None:
        log.debug("remove expired lease", extra={"fields": {"lease": node.key}})
        cur.execute("DELETE FROM leases WHERE namespace=? AND id=?", (node.namespace, node.key))

    def cleanup(self) -> None:
        return None


@dataclass
class Stats:
    """What one collection did and how long its phases took (seconds)."""

    meta_seconds: float = 0.0
    cleanup_seconds: dict[str, float] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        # Like containerd, only the metadata phase counts as "pause" time:
        # cleanup runs without blocking other database users.
        return self.meta_seconds


MutationCallback = Callable[[bool], None]


class Collector:
    """Marks from the roots of every registered kind and sweeps the rest.

    Thread-safe; ``collect`` is blocking (run it off the event loop). Kinds
    are consulted in registration order.
    """

    def __init__(self, db: DB) -> None:
        self.db = db
        self._kinds: dict[str, ResourceKind] = {}
        self._dirty: set[str] = set()
        self._mu = threading.Lock()
        self._collect_mu = threading.Lock()
        self._callbacks: list[MutationCallback] = []

    # -- registration ------------------------------------------------------

    def register(self, kind: ResourceKind) -> None:
        """Add a resource kind; names are unique (AlreadyExists otherwise)."""
        from berth import errdefs

        with self._mu:
            if kind.name in self._kinds:
                raise errdefs.AlreadyExists(f"gc resource kind {kind.name!r}: already registered")
            self._kinds[kind.name] = kind

    def kinds(self) -> list[str]:
        with self._mu:
            return list(self._kinds)

    def register_mutation_callback(self, fn: MutationCallback) -> None:
        """Call ``fn(deleted)`` after every committed metadata write."""
        with self._mu:
            self._callbacks.append(fn)

    # -- what stores call --------------------------------------------------

    def mark_dirty(self, kind: str) -> None:
        """Ask for ``kind``'s cleanup at the next collection (e.g. a blob record
        was deleted, so its file may now be unreferenced)."""
        with self._mu:
            self._dirty.add(kind)

    def mutated(self, *, deletion: bool = False) -> None:
        """Report a committed write; ``deletion`` when it removed a reference."""
        with self._mu:
            callbacks = list(self._callbacks)
        for fn in callbacks:
            try:
                fn(deletion)
            except Exception:
                log.exception("gc mutation callback failed")

    # -- collection ----------------------------------------------------------

    def collect(self, *, now: datetime | None = None) -> Stats:
        """Run one full collection and return its statistics. Blocking."""
        with self._collect_mu:
            with self._mu:
                kinds = dict(self._kinds)
            stats = Stats()
            moment = now or datetime.now(UTC)
            t0 = time.monotonic()
            with self.db.tx() as cur:
                marked = self._mark(cur, kinds, moment)
                for kind in kinds.values():
                    removed = 0
                    for node in list(kind.candidates(cur)):
                        if node not in marked:
                            kind.remove(cur, node)
                            removed += 1
                    if removed:
                        stats.removed[kind.name] = removed
                        with self._mu:
                            self._dirty.add(kind.name)
            stats.meta_seconds = time.monotonic() - t0
            with self._mu:
                dirty, self._dirty = self._dirty, set()
            for name in dirty:
                kind_obj = kinds.get(name)
                if kind_obj is None:
                    continue
                t1 = time.monotonic()
                try:
                    kind_obj.cleanup()
                except Exception:
                    log.exception("gc cleanup failed", extra={"fields": {"kind": name}})
                    with self._mu:
                        self._dirty.add(name)  # try again next time
                stats.cleanup_seconds[name] = time.monotonic() - t1
            log.debug(
                "garbage collected",
                extra={"fields": {"d_ms": round(stats.meta_seconds * 1000, 3), **stats.removed}},
            )
            return stats

    def _mark(
        self, cur: sqlite3.Cursor, kinds: Mapping[str, ResourceKind], now: datetime
    ) -> set[Node]:
        marked: set[Node] = set()
        stack: list[Node] = []
        for kind in kinds.values():
            for node in kind.roots(cur, now):
                if node not in marked:
                    marked.add(node)
                    stack.append(node)
        while stack:
            node = stack.pop()
            owner = kinds.get(node.kind)
            if owner is None:
                continue  # dead edge to a kind not (yet) registered
            for ref in owner.references(cur, node):
                if ref not in marked:
                    marked.add(ref)
                    stack.append(ref)
        return marked


# ---------------------------------------------------------------------------
# Scheduling


def parse_duration(text: str) -> float:
    """A Go duration string (``"100ms"``, ``"1.5s"``, ``"1m30s"``) in seconds.

    Raises ValueError for anything else; ``"0"`` is allowed as in Go.
    """
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"invalid duration {text!r}: use a number and unit, e.g. 100ms or 1s")
    return sign * sum(float(n) * units[u] for n, u in parts)


@dataclass
class SchedulerConfig:
    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: float = 0.0
    startup_delay: float = 0.1


class Scheduler:
    """Runs ``collect`` on the event loop's schedule, as containerd's gc scheduler does.

    * A deletion makes a collection due after ``schedule_delay`` (or, with
      ``deletion_threshold`` > 0, only once that many deletions happened).
    * ``mutation_threshold`` writes make the next periodic check collect.
    * After each collection the next check waits ``avg_pause/pause_threshold
      - avg_pause``, so collections cost at most that fraction of real time.
    * ``schedule_and_wait`` forces a collection and returns its stats.

    ``on_mutation`` may be called from any thread.

    A periodic check that finds nothing asking for a collection leaves the
    next check unarmed ("parked") rather than waking every interval to skip
    again: with the usual interval (fifty times a collection's time, tens of
    milliseconds) those empty wake-ups were most of an idle daemon's CPU
    time. The first event that would make a check collect re-arms it, on the
    same grid of check times the daemon would have kept, so when a
    collection happens does not change.
    """

    def __init__(self, collect: Callable[[], Stats], config: SchedulerConfig) -> None:
        self._collect = collect
        self.pause_threshold = min(max(config.pause_threshold, 0.0), 0.5)
        self.deletion_threshold = config.deletion_threshold
        self.mutation_threshold = max(config.mutation_threshold, 0)
        self.schedule_delay = max(config.schedule_delay, 0.0)
        self.startup_delay = max(config.startup_delay, 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[Stats]] = []
        self._triggered = False
        self._deletions = 0
        self._mutations = 0
        self._next_at: float | None = None
        self._last_at: float | None = None
        self._interval = 1.0
        self._parked = False
        self._gc_time = 0.0
        self._collections = 0

    @property
    def collections(self) -> int:
        """How many collections this scheduler has completed."""
        return self._collections

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def exports(self) -> dict[str, str]:
        return {
            "PauseThreshold": str(self.pause_threshold),
            "DeletionThreshold": str(self.deletion_threshold),
            "MutationThreshold": str(self.mutation_threshold),
            "ScheduleDelay": f"{self.schedule_delay}s",
        }

    def start(self) -> None:
        """Start the scheduling task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._parked = False
        if self.startup_delay > 0:
            self._next_at = self._loop.time() + self.startup_delay
        self._task = self._loop.create_task(self._run(), name="gc-scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for w in self._waiters:
            if not w.done():
                w.cancel()
        self._waiters = []

    # -- triggers ------------------------------------------------------------

    def on_mutation(self, deletion: bool) -> None:
        """Thread-safe mutation report (registered as a collector callback)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._record, deletion)
        except RuntimeError:
            pass  # loop shutting down

    def _record(self, deletion: bool) -> None:
        if deletion:
            self._deletions += 1
        self._mutations += 1
        now = self._now()
        if self._parked and self._check_would_collect():
            self._unpark(now)
        due = (
            (self.deletion_threshold > 0 and self._deletions >= self.deletion_threshold)
            or (self._next_at is None and self.deletion_threshold == 0 and self._deletions > 0)
            or (
                self._next_at is None
                and self.mutation_threshold > 0
                and self._mutations >= self.mutation_threshold
            )
        )
        if due:
            self._schedule_by(now + self.schedule_delay)

    async def schedule_and_wait(self) -> Stats:
        """Force a collection (after ``schedule_delay``) and wait for its stats.

        Raises RuntimeError if the collection failed or the scheduler is not
        running.
        """
        if self._loop is None or self._task is None:
            raise RuntimeError("gc scheduler is not running")
        fut: asyncio.Future[Stats] = self._loop.create_future()
        self._waiters.append(fut)
        self._triggered = True
        self._schedule_by(self._now() + self.schedule_delay)
        return await fut

    # -- the loop ------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _check_would_collect(self) -> bool:
        """Whether a periodic check now would collect rather than skip."""
        return (
            self._triggered
            or self._last_at is None
            or self._deletions > 0
            or (self.mutation_threshold > 0 and self._mutations >= self.mutation_threshold)
        )

    def _unpark(self, now: float) -> None:
        """Arm the next periodic check: the first time on the parked grid not yet past."""
        self._parked = False
        if self._next_at is not None and self._next_at < now:
            missed = math.ceil((now - self._next_at) / self._interval)
            self._next_at += missed * self._interval
        if self._wake is not None:
            self._wake.set()

    def _schedule_by(self, at: float) -> None:
        if self._parked:
            self._unpark(self._now())
        if self._next_at is None or self._next_at > at:
            self._next_at = at
            if self._wake is not None:
                self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            next_at = self._next_at
            timeout = None if self._parked or next_at is None else max(0.0, next_at - self._now())
            self._wake.clear()
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                if self._parked or self._next_at is None or self._next_at > self._now():
                    continue  # woken early to re-plan
            # Due. Skip a periodic check when nothing asks for a collection,
            # and park: until an event makes one worthwhile, checks would
            # only skip again.
            if not self._check_would_collect():
                self._next_at = self._now() + self._interval
                self._parked = True
                continue
            await self._collect_once()

    async def _collect_once(self) -> None:
        waiters, self._waiters = self._waiters, []
        self._triggered = False
        self._deletions = 0
        self._mutations = 0
        try:
            stats = await asyncio.to_thread(self._collect)
        except Exception as exc:
            log.error("garbage collection failed", extra={"fields": {"error": str(exc)}})
            self._last_at = self._now()
            self._next_at = self._now() + self._interval + 1.0
            if self._triggered:
                self._next_at = self._now() + self.schedule_delay
            for w in waiters:
                if not w.done():
                    w.set_exception(RuntimeError(f"gc failed: {exc}"))
            return
        self._collections += 1
        self._gc_time += stats.elapsed
        if self.pause_threshold > 0:
            avg = self._gc_time / self._collections
            self._interval = max(avg / self.pause_threshold - avg, 0.001)
        self._last_at = self._now()
        self._next_at = self._last_at + self._interval
        if self._triggered:
            # Someone forced a collection while this one ran: it may not
            # have seen their change, so give them a fresh one.
            self._next_at = min(self._next_at, self._last_at + self.schedule_delay)
        for w in waiters:
            if not w.done():
                w.set_result(stats)


# ---------------------------------------------------------------------------
# Lease bookkeeping shared by the stores that create leased resources


def add_lease_resource(
    cur: sqlite3.Cursor, namespace: str, lease: str, rtype: str, rid: str
) -> None:
    """Make ``(rtype, rid)`` a resource of ``lease`` inside an open transaction.

    This is how a request carrying ``containerd-lease`` protects what it
    creates. Raises NotFound when the lease does not exist, as containerd does.
    """
    from berth import errdefs

    row = cur.execute(
        "SELECT 1 FROM leases WHERE namespace=? AND id=?", (namespace, lease)
    ).fetchone()
    if row is None:
        raise errdefs.NotFound(f"lease {errdefs.go_quote(lease)} does not exist: not found")
    cur.execute(
        "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, id) VALUES (?,?,?,?)",
        (namespace, lease, rtype, rid),
    )


def remove_lease_resource(
    cur: sqlite3.Cursor, namespace: str, lease: str, rtype: str, rid: str
) -> None:
    """Drop ``(rtype, rid)`` from ``lease``; a missing lease or resource is fine."""
    cur.execute(
        "DELETE FROM lease_resources WHERE namespace=? AND lease=? AND type=? AND id=?",
        (namespace, lease, rtype, rid),
    )


async def collect_now(scheduler: Scheduler | None, collector: Collector) -> Stats:
    """Run a collection before returning (``sync`` deletes, tests).

    Goes through the scheduler when one runs, so the collection is counted
    and serialised with scheduled ones; otherwise collects directly.
    """
    if scheduler is not None and scheduler.running:
        return await scheduler.schedule_and_wait()
    return await asyncio.to_thread(collector.collect)
