"""The task manager: starting shims, tracking their tasks, cleaning up after them.

This is Berth's counterpart of containerd's ``runtime/v2`` shim and task
managers, folded into one object because nothing else needs the seam between
them.

Lifecycle of a task
-------------------
``create``: make the bundle (``config.json`` from the container's spec),
open the shim's log FIFO, run the shim binary's ``start``, connect to the
address it printed, record ``shim-binary-path`` and call ``Create``. Any
failure undoes what was done, newest first: the shim is asked to delete and
shut down (or, if it never answered, its ``delete`` command is run), and the
bundle is removed.

``delete``: the shim's ``Delete`` (which publishes ``/tasks/delete``),
``Shutdown``, closing the connection on purpose, and removing the bundle.
containerd runs the shim's ``delete`` command after every deletion (its
connection-closed callback cannot tell a deliberate close from a crash);
Berth tells them apart and skips that second cleanup when the shim's own
``Delete`` succeeded, which saves a process spawn per container.

A shim that dies
----------------
When a connection drops without the manager having closed it, the shim died
(killed, OOM, crashed). The manager then runs the binary's ``delete`` command
(``runc delete --force``, unmounting the rootfs), removes the bundle,
publishes ``/tasks/exit`` and ``/tasks/delete`` with the exit ``delete``
reported (128+SIGKILL for both shims in use here), and keeps the task as a
stopped tombstone until a client deletes it (see :mod:`.shim`).

Shim groups
-----------
With ``shim_group = "namespace"`` every container of a namespace that runs
on Berth's own shim shares one shim server. The manager asks for this without
touching the container's spec: the shim's ``start`` gets
``BERTH_SHIM_GROUP`` in its environment, and the shim names its socket after
the group instead of the container (a group annotation in the spec still
wins). Go shims get nothing: they group only by annotation.

Each task keeps its own connection to the shared server, so create, delete,
restore and dead-shim cleanup work per task unchanged; deleting a task sends
``Shutdown``, which the shim ignores while it still serves others. What
grouping adds is one race: a task created into a group just as the group's
last task is deleted could be handed the address of a server that is shutting
down. A per-group gate closes it: creates enter it together, while the
``Shutdown`` after a deletion (and the undo of a failed create) holds it
alone, so a server never gets ``Shutdown`` between another task's ``start``
and its ``Create``. Ungrouped tasks skip the gate.

runc's state directory
----------------------
runc keeps a container's state under ``<root>/<namespace>/<id>``, where a
runc shim takes ``<root>`` from the ``Root`` of the runtime options. Without
one, containerd's Go shims fall back to ``/run/containerd/runc``: the very
directory of a containerd on the same host, so the same id under both
daemons would collide (the second ``runc create`` fails, and the failed
create's ``runc delete --force`` kills the other daemon's container). Berth's
own shim falls back to ``runc`` beside the daemon's socket instead. The
manager gives Go shims that same directory (or the configured ``runc_root``)
by filling in ``Root`` of the task's effective options before ``start``:
absent options become runc ``Options`` for the runc shims
(``containerd-shim-runc-v1``/``-v2``), runc ``Options`` with an empty
``Root`` get it whatever the binary, an explicit ``Root`` and options of
other types are left alone. The same options go on ``start``'s stdin and in
``Create``; the Go shim records them in the bundle (``options.json``), so
its ``delete`` at cleanup and restore looks in the same place. Berth's own
shim gets nothing unless ``runc_root`` is set: it derives the default itself.

Restore at boot
---------------
For every ``<state>/<namespace>/<id>`` bundle: an empty one is removed; the
others name their shim binary (``shim-binary-path``, or the container's
runtime from metadata for bundles written before the shim answered). The
manager reconnects to the address in the bundle and checks the shim with
``Connect``. A shim that answers is adopted as it is, whatever its task's
state. One that does not is cleaned up as a dead shim, and because its exit
happened while nobody was listening, ``/tasks/exit`` and ``/tasks/delete``
are published for it and it stays as a tombstone. Work directories of tasks
that were not restored are removed.

Exits of live shims that happened while the daemon was down: every task has
a background ``Wait`` on its init process, and when it returns the manager
drops an ``exit-seen`` marker in the bundle. A restored task found stopped
without that marker exited unobserved. Berth's own shim re-sends its queued
``/tasks/exit`` once the daemon's event socket is back (its publisher retries
in order, without limit), so the manager publishes nothing for it, lest
subscribers see the exit twice; for other shims (Go shims give up forwarding
after a few retries) the manager publishes ``/tasks/exit`` from the shim's
real exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from berth import errdefs
from berth.core import events
from berth.core.metadata.containers import AnyValue
from berth.core.runtime.binary import (
    ShimBinary,
    ShimLog,
    binary_name,
    default_publish_binary,
    resolve_runtime_path,
)
from berth.core.runtime.bundle import Bundle, load_bundle, new_bundle
from berth.core.runtime.shim import (
    LOAD_TIMEOUT,
    ShimTask,
    decode_delete_response,
    encode_options,
    now_ns,
    task_delete_event,
    task_exit_event,
    with_runc_root,
)
from berth.core.runtime.types import CreateOpts, Exit, Status
from berth.ttrpc import Client

__all__ = [
    "NAMESPACE_GROUP",
    "RUNC_SHIMS",
    "SHIM_GROUPS",
    "ManagerConfig",
    "TaskManager",
    "default_runc_root",
]

log = logging.getLogger("berth.runtime")

CLEANUP_TIMEOUT = 10.0
SHIM_EXIT_TIMEOUT = 2.0
EXIT_SEEN = "exit-seen"
BERTH_SHIM = "containerd-shim-berth-v2"
#: containerd's Go shims, which take runc ``Options`` (see the module notes).
RUNC_SHIMS = ("containerd-shim-runc-v1", "containerd-shim-runc-v2")
#: Values of ``ManagerConfig.shim_group``: one shim per container, or per namespace.
SHIM_GROUPS = ("", "namespace")
#: The group name a namespace's shared shim is started with. The '@' keeps it
#: apart from every container id (identifiers cannot contain one), whose
#: own shims are named after the id.
NAMESPACE_GROUP = "@namespace"

#: Finds a container's runtime name for restore: (namespace, id) -> name or None.
RuntimeLookup = Callable[[str, str], str | None]


def default_runc_root(address: str) -> str:
    """runc's state directory when nothing names one: ``runc`` beside the daemon's socket.

    The rule Berth's shim applies to the ``-address`` it is started with, so
    tasks of every shim berthd runs share one directory.
    """
    path = os.path.abspath(address.removeprefix("unix://"))
    return os.path.join(os.path.dirname(path), "runc")


@dataclass
class ManagerConfig:
    """Where the manager works and what it tells shims."""

    root: Path
    state: Path
    address: str
    ttrpc_address: str
    default_runtime: str = "io.containerd.berth.v2"
    publish_binary: str = ""
    shim_debug: bool = False
    #: "" (one shim per container) or "namespace" (see the module notes).
    shim_group: str = ""
    #: runc's state directory for runc shims; "" for :func:`default_runc_root`.
    runc_root: str = ""
    cleanup_timeout: float = CLEANUP_TIMEOUT


class _Gate:
    """Creates into one shim group run together; its shutdowns run alone.

    A shared/exclusive lock that prefers the exclusive side, so a stream of
    creates cannot starve a deletion. State changes happen between awaits
    (the loop is single-threaded), so leaving never awaits and a cancelled
    holder cannot wedge the gate.
    """

    def __init__(self) -> None:
        self.sharing = 0
        self.exclusive = False
        self.waiting = 0
        #: Holders and waiters of either kind; the manager drops idle gates.
        self.users = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._until(lambda: not self.exclusive and not self.waiting)
        self.sharing += 1
        try:
            yield
        finally:
            self.sharing -= 1
            self._notify()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._until(lambda: not self.exclusive and not self.sharing)
        finally:
            self.waiting -= 1
        self.exclusive = True
        try:
            yield
        finally:
            self.exclusive = False
            self._notify()


class TaskManager:
    """Tasks by namespace and id, each backed by a shim.

    Methods are coroutines for the daemon's event loop; blocking work goes to
    worker threads. Errors are ``berth.errdefs`` classes.
    """

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self._tasks: dict[tuple[str, str], ShimTask] = {}
        self._creating: set[tuple[str, str]] = set()
        self._paths: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._gates: dict[tuple[str, str], _Gate] = {}
        self._closed = False
        if not config.publish_binary:
            config.publish_binary = default_publish_binary()
        #: Where runc keeps the state of tasks whose options name no ``Root``.
        self.runc_root = config.runc_root or default_runc_root(config.address)

    # -- lookups -------------------------------------------------------------------

    def get(self, namespace: str, id: str) -> ShimTask:
        """The task ``id``; NotFound (containerd's wording) when there is none."""
        t = self._tasks.get((namespace, id))
        if t is None:
            raise errdefs.NotFound(f"task {id} not found")
        return t

    def list(self, namespace: str) -> list[ShimTask]:
        """The namespace's tasks, by id."""
        return [t for (ns, _), t in sorted(self._tasks.items()) if ns == namespace]

    def resolve(self, runtime: str) -> str:
        """The shim binary for ``runtime`` (a name, or an absolute path); cached by binary name."""
        runtime = runtime or self.config.default_runtime
        if os.path.isabs(runtime):
            return resolve_runtime_path(runtime)
        name = binary_name(runtime)
        cached = self._paths.get(name)
        if cached is not None:
            return cached
        path = resolve_runtime_path(runtime)
        self._paths[name] = path
        return path

    def shim_group(self, path: str) -> str:
        """The group a new task of shim binary ``path`` is started in ("" for none).

        Only Berth's own shim is grouped by configuration: it is the one that
        reads ``BERTH_SHIM_GROUP``.
        """
        if self.config.shim_group == "namespace" and os.path.basename(path) == BERTH_SHIM:
            return NAMESPACE_GROUP
        return ""

    def shim_options(self, path: str, options: AnyValue | None) -> AnyValue | None:
        """The runtime options a task of shim binary ``path`` gets, given its own.

        ``Root`` defaults to :attr:`runc_root` wherever a shim would otherwise
        fall back to containerd's directory (see the module notes).
        """
        name = os.path.basename(path)
        if name == BERTH_SHIM and not self.config.runc_root:
            return options  # it arrives at the same directory on its own
        if options is None and name not in RUNC_SHIMS and name != BERTH_SHIM:
            return None  # nothing says this shim reads runc Options
        return with_runc_root(options, self.runc_root)

    @contextlib.asynccontextmanager
    async def _in_group(
        self, namespace: str, group: str, *, alone: bool = False
    ) -> AsyncIterator[None]:
        """Hold the group's gate, shared (creates) or ``alone`` (shutdowns)."""
        if not group:
            yield
            return
        key = (namespace, group)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        gate.users += 1
        try:
            async with gate.alone() if alone else gate.shared():
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[key]

    def _binary(self, path: str, bundle: Bundle) -> ShimBinary:
        c = self.config
        return ShimBinary(
            path,
            bundle,
            address=c.address,
            ttrpc_address=c.ttrpc_address,
            publish_binary=c.publish_binary,
            debug=c.shim_debug,
        )

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- create --------------------------------------------------------------------

    async def create(self, namespace: str, id: str, opts: CreateOpts) -> tuple[ShimTask, int]:
        """Start a shim and create the task in it; returns the task and its pid.

        Raises AlreadyExists when the task exists, InvalidArgument for a bad
        id, and whatever the shim binary or the shim's ``Create`` reported,
        prefixed as containerd prefixes it.
        """
        key = (namespace, id)
        if key in self._tasks or key in self._creating:
            raise errdefs.AlreadyExists(f"task {id}: already exists")
        self._creating.add(key)
        try:
            return await self._create(namespace, id, opts)
        finally:
            self._creating.discard(key)

    async def _create(self, namespace: str, id: str, opts: CreateOpts) -> tuple[ShimTask, int]:
        c = self.config
        # Resolve first: a missing binary should not cost a bundle.
        try:
            path = self.resolve(opts.runtime)
        except errdefs.BerthError as exc:
            raise type(exc)(
                f"failed to start shim: failed to resolve runtime path: {exc}"
            ) from None
        options = self.shim_options(path, opts.shim_options)
        if options is not opts.shim_options:
            opts = replace(opts, task_options=options)

        def make_bundle() -> Bundle:
            # The binary is recorded before it starts: a daemon that dies
            # mid-create then finds what to run ``delete`` with at restore.
            b = new_bundle(c.state, c.root, namespace, id, opts.spec.value)
            b.write_shim_binary(path)
            return b

        bundle = await asyncio.to_thread(make_bundle)
        binary = self._binary(path, bundle)
        group = self.shim_group(path)
        shim_log: ShimLog | None = None
        task: ShimTask | None = None
        try:
            async with self._in_group(namespace, group):
                shim_log = await asyncio.to_thread(ShimLog.open, bundle)
                shim_log.attach()
                try:
                    address = await binary.start(encode_options(opts.shim_options), group=group)
                except errdefs.BerthError as exc:
                    raise type(exc)(f"failed to start shim: start failed: {exc}") from None
                task = await self._connect(bundle, binary, address, shim_log)
                task.group = group
                try:
                    pid = await task.create(opts)
                except errdefs.BerthError as exc:
                    raise type(exc)(f"failed to create shim task: {exc}") from None
        except BaseException:
            # Outside the shared gate: the undo's Shutdown must run alone.
            await asyncio.shield(self._undo_create(bundle, binary, task, shim_log, group))
            raise
        self._tasks[(namespace, id)] = task
        self._spawn(self._watch_exit(task), f"wait-{namespace}-{id}")
        return task, pid

    async def _connect(
        self, bundle: Bundle, binary: ShimBinary, address: str, shim_log: ShimLog | None
    ) -> ShimTask:
        holder: list[ShimTask] = []

        def on_close() -> None:
            if holder and not holder[0].closing and not self._closed:
                self._spawn(self._shim_disconnected(holder[0]), f"cleanup-{bundle.id}")

        client = await Client.connect(address, timeout=LOAD_TIMEOUT, on_close=on_close)
        task = ShimTask(bundle, client, binary, shim_log)
        task.address = address
        holder.append(task)
        if client.closed:
            # It dropped before the callback could see the task.
            on_close()
        return task

    async def _undo_create(
        self,
        bundle: Bundle,
        binary: ShimBinary,
        task: ShimTask | None,
        shim_log: ShimLog | None,
        group: str = "",
    ) -> None:
        async with self._in_group(bundle.namespace, group, alone=True):
            await self._undo_create_alone(bundle, binary, task, shim_log)

    async def _undo_create_alone(
        self,
        bundle: Bundle,
        binary: ShimBinary,
        task: ShimTask | None,
        shim_log: ShimLog | None,
    ) -> None:
        deleted = False
        if task is not None:
            task.closing = True
            try:
                async with asyncio.timeout(self.config.cleanup_timeout):
                    with contextlib.suppress(errdefs.NotFound):
                        await task.delete_task()
                    deleted = True
                    await task.shutdown()
            except (errdefs.BerthError, TimeoutError) as exc:
                log.warning(
                    "failed to delete shim task after failed create",
                    extra={"fields": {"id": bundle.id, "error": str(exc)}},
                )
            await task.close()
        if not deleted:
            # The shim may still be running (or may have left a runc
            # container behind); its delete command cleans up either way.
            with contextlib.suppress(errdefs.BerthError):
                await binary.delete(self.config.cleanup_timeout)
            if task is not None:
                with contextlib.suppress(errdefs.BerthError):
                    await task.shutdown()
            else:
                await self._shutdown_unreached(bundle, binary)
        if shim_log is not None:
            shim_log.close()
        try:
            await asyncio.to_thread(bundle.delete)
        except errdefs.BerthError as exc:
            log.error(
                "failed to remove bundle", extra={"fields": {"id": bundle.id, "error": str(exc)}}
            )

    async def _shutdown_unreached(self, bundle: Bundle, binary: ShimBinary) -> None:
        """Ask a shim we never reached to go, if it wrote its address.

        ``start`` can leave a shim serving although the create failed before
        we connected (``start`` timed out, or the connection failed); nothing
        else would ever tell it to exit. A shim serving other tasks (a
        group's) ignores the request.
        """
        try:
            address = await asyncio.to_thread(bundle.read_address)
            client = await Client.connect(address, timeout=self.config.cleanup_timeout)
        except (errdefs.BerthError, OSError):
            return  # it wrote no address, or nothing listens there: gone
        stray = ShimTask(bundle, client, binary)
        stray.closing = True
        try:
            async with asyncio.timeout(self.config.cleanup_timeout):
                await stray.shutdown()
        except (errdefs.BerthError, TimeoutError) as exc:
            log.warning(
                "failed to shut down a shim after a failed create",
                extra={"fields": {"id": bundle.id, "address": address, "error": str(exc)}},
            )
        finally:
            await stray.close()

    # -- exits ---------------------------------------------------------------------

    async def _watch_exit(self, task: ShimTask) -> None:
        """Wait for the init process; mark its exit as seen in the bundle."""
        try:
            exit = await task.wait()
        except (errdefs.BerthError, OSError):
            return  # deleted, or the shim died: handled elsewhere
        task.exit = exit
        if task.dead is None and not task.closing:
            with contextlib.suppress(OSError):
                await asyncio.to_thread((task.bundle.path / EXIT_SEEN).touch)

    async def _shim_disconnected(self, task: ShimTask) -> None:
        """The connection dropped without us closing it: the shim is dead."""
        log.warning(
            "shim disconnected, cleaning up",
            extra={"fields": {"id": task.id, "namespace": task.namespace}},
        )
        task.close_log()
        exit = await self._cleanup_dead(task.binary)
        if (task.namespace, task.id) not in self._tasks:
            # Deleted meanwhile, or never finished creating: nothing to report.
            task.mark_dead(exit)
            return
        await self._publish_exit(task.namespace, task.id, exit)
        task.mark_dead(exit)

    async def _cleanup_dead(self, binary: ShimBinary) -> Exit:
        """Run the shim's ``delete`` command and remove the bundle; the exit to report."""
        bundle = binary.bundle
        exit = Exit(pid=0, status=255, exited_at_ns=now_ns())
        try:
            out = await binary.delete(self.config.cleanup_timeout)
            exit = decode_delete_response(out)
        except errdefs.BerthError as exc:
            log.warning(
                "failed to clean up after shim disconnected",
                extra={
                    "fields": {"id": bundle.id, "namespace": bundle.namespace, "error": str(exc)}
                },
            )
        try:
            await asyncio.to_thread(bundle.delete)
        except errdefs.BerthError as exc:
            log.error(
                "failed to remove bundle", extra={"fields": {"id": bundle.id, "error": str(exc)}}
            )
        return exit

    async def _publish_exit(self, namespace: str, id: str, exit: Exit) -> None:
        pub = events.publisher()
        await pub.publish(namespace, "/tasks/exit", task_exit_event(id, exit))
        await pub.publish(namespace, "/tasks/delete", task_delete_event(id, exit))

    # -- delete --------------------------------------------------------------------

    async def delete(self, namespace: str, id: str) -> Exit:
        """Delete task ``id`` and its shim; returns the init process's exit.

        A tombstone is simply forgotten. Raises NotFound without a task, and
        the shim's error (FailedPrecondition for a running task with some
        shims) when it refuses.
        """
        task = self.get(namespace, id)
        if task.dead is not None:
            self._tasks.pop((namespace, id), None)
            return task.dead
        try:
            exit = await task.delete_task()
        except errdefs.NotFound:
            exit = None
        except errdefs.Unavailable:
            if task.client.closed and not task.closing:
                # Died under the call: the disconnect handler owns the cleanup.
                await task._dead_event.wait()
                self._tasks.pop((namespace, id), None)
                assert task.dead is not None
                return task.dead
            raise
        self._tasks.pop((namespace, id), None)
        task.closing = True
        async with self._in_group(namespace, task.group, alone=True):
            with contextlib.suppress(errdefs.BerthError, TimeoutError):
                await task.shutdown()
            await task.close()
            if not any(t.address == task.address and t.dead is None for t in self._tasks.values()):
                # The shim exits now (a grouped one serving others would not).
                await task.wait_shim_exit(SHIM_EXIT_TIMEOUT)
        if exit is None:
            # The shim no longer knew the task: clean up as for a dead shim.
            exit = await self._cleanup_dead(task.binary)
        else:
            try:
                await asyncio.to_thread(task.bundle.delete)
            except errdefs.BerthError as exc:
                log.error(
                    "failed to delete bundle",
                    extra={"fields": {"id": id, "error": str(exc)}},
                )
        return exit

    # -- restore -------------------------------------------------------------------

    async def restore(self, runtime_of: RuntimeLookup) -> None:
        """Adopt the shims of a previous daemon run (see the module notes)."""
        state = self.config.state
        try:
            ns_dirs = sorted(p for p in state.iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        jobs = []
        for ns_dir in ns_dirs:
            ns = ns_dir.name
            if ns.startswith("."):
                continue
            for d in sorted(ns_dir.iterdir()):
                if d.name.startswith("."):
                    # A bundle whose deletion was interrupted.
                    shutil.rmtree(d, ignore_errors=True)
                    continue
                if d.is_dir():
                    jobs.append(self._restore_one(load_bundle(state, ns, d.name), runtime_of))
        await asyncio.gather(*jobs)
        await asyncio.to_thread(self._cleanup_work_dirs)

    async def _restore_one(self, bundle: Bundle, runtime_of: RuntimeLookup) -> None:
        ns, id = bundle.namespace, bundle.id
        fields = {"id": id, "namespace": ns}
        try:
            if not await asyncio.to_thread(lambda: any(bundle.path.iterdir())):
                await asyncio.to_thread(bundle.delete)
                return
            runtime = await asyncio.to_thread(bundle.read_shim_binary)
            if not runtime:
                found = await asyncio.to_thread(runtime_of, ns, id)
                runtime = found or ""
            if not runtime:
                log.warning("no runtime for bundle, removing it", extra={"fields": fields})
                await asyncio.to_thread(bundle.delete)
                return
            path = self.resolve(runtime)
        except errdefs.BerthError as exc:
            log.error(
                "cannot restore task, removing its bundle",
                extra={"fields": {**fields, "error": str(exc)}},
            )
            with contextlib.suppress(errdefs.BerthError):
                await asyncio.to_thread(bundle.delete)
            return
        binary = self._binary(path, bundle)
        task: ShimTask | None = None
        shim_log: ShimLog | None = None
        try:
            address = await asyncio.to_thread(bundle.read_address)
            shim_log = await asyncio.to_thread(ShimLog.open, bundle)
            task = await self._connect(bundle, binary, address, shim_log)
            await task.connect()
            state = await task.state()
        except (errdefs.BerthError, OSError) as exc:
            log.info(
                "shim of a previous run is gone, cleaning up",
                extra={"fields": {**fields, "error": str(exc)}},
            )
            if task is not None:
                task.closing = True
                if not task.client.closed:
                    # Alive but without the task: let it go before cleaning up.
                    with contextlib.suppress(errdefs.BerthError, TimeoutError):
                        await task.shutdown()
                await task.close()
            if shim_log is not None:
                shim_log.close()
            exit = await self._cleanup_dead(binary)
            tomb = ShimTask(bundle, _closed_client(), binary)
            tomb.mark_dead(exit)
            self._tasks[(ns, id)] = tomb
            await self._publish_exit(ns, id, exit)
            return
        assert shim_log is not None
        shim_log.attach()
        # The configured group, not necessarily the one the shim was started
        # in; it only decides which gate the task's deletion holds.
        task.group = self.shim_group(path)
        self._tasks[(ns, id)] = task
        seen = (bundle.path / EXIT_SEEN).exists()
        if state.status == Status.STOPPED:
            task.exit = Exit(state.pid, state.exit_status, state.exited_at_ns)
            if not seen and os.path.basename(path) != BERTH_SHIM:
                await events.publisher().publish(ns, "/tasks/exit", task_exit_event(id, task.exit))
            if not seen:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread((bundle.path / EXIT_SEEN).touch)
        else:
            self._spawn(self._watch_exit(task), f"wait-{ns}-{id}")
        log.info("restored task", extra={"fields": {**fields, "status": state.status.name}})

    def _cleanup_work_dirs(self) -> None:
        root = self.config.root
        try:
            ns_dirs = [p for p in root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return
        for ns_dir in ns_dirs:
            for d in ns_dir.iterdir():
                if (ns_dir.name, d.name) not in self._tasks:
                    shutil.rmtree(d, ignore_errors=True)

    # -- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect from every shim, leaving them running (as containerd does)."""
        self._closed = True
        for t in list(self._tasks.values()):
            if t.dead is None:
                t.closing = True
                await t.close()
        for bg in list(self._background):
            bg.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _ClosedClient:
    """Stands in for the connection of a tombstone restored from a dead shim."""

    closed = True

    async def close(self) -> None:
        return None


def _closed_client() -> Client:
    return _ClosedClient()  # type: ignore[return-value]
