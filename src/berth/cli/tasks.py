"""``berth tasks``: run, watch and control the processes of containers.

A task is a container's running (or created, or stopped) init process; exec
adds more processes to it. The subcommands follow ``ctr tasks``: ls, start,
attach, exec, kill, pause, resume, ps, metrics, rm, plus wait and update.

This module also holds what ``berth run`` shares with ``start``, ``attach``
and ``exec``: :func:`following` forwards signals while berth waits for a process
(or, with a terminal, keeping the pty's size in step with the local one) and
returns its exit code, which becomes berth's own.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._errors import Failure
from berth.cli._group import Group
from berth.cli._output import echo_json, echo_table, format_option, quiet_option, rfc3339

if TYPE_CHECKING:
    import concurrent.futures

    from berth.client import ExitStatus, Process, Task, TaskMetric

#: Signals a foreground ``berth`` passes on to the process it follows (ctr
#: forwards everything it may catch; these are the ones people send).
FORWARDED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)

#: The label an image's StopSignal is recorded under (``tasks kill``'s default).
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"

# Exit codes for a command that could not be run at all, as shells (and
# docker/nerdctl) report them.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


# --- following a process ------------------------------------------------------------------


@contextlib.contextmanager
def forwarding(target: Task | Process) -> Iterator[None]:
    """Forward :data:`FORWARDED` signals to ``target`` while the block runs.

    The handlers only queue the signal; a thread makes the Kill call, so a
    signal landing in the middle of another RPC never re-enters gRPC.
    """
    from berth import errdefs

    pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def forward() -> None:
        while (sig := pending.get()) is not None:
            try:
                target.kill(sig)
            except errdefs.NotFound:
                return  # the process is gone: nothing left to signal
            except errdefs.BerthError as exc:
                click.echo(f"berth: forwarding signal {sig}: {exc}", err=True)

    worker = threading.Thread(target=forward, name="berth-signals", daemon=True)
    worker.start()
    saved = {s: signal.signal(s, lambda n, _f: pending.put(n)) for s in FORWARDED}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        pending.put(None)


@contextlib.contextmanager
def console(target: Task | Process) -> Iterator[None]:
    """Keep ``target``'s pty the size of this terminal (SIGWINCH), from now on."""
    from berth.client import cio

    def resize(*_: Any) -> None:
        with contextlib.suppress(Exception):
            target.resize(*cio.terminal_size(sys.stdin.fileno()))

    resize()
    saved = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, saved)


def await_exit(fut: concurrent.futures.Future[ExitStatus]) -> ExitStatus:
    """The Future's exit status, waited for in short steps so that signal
    handlers keep running on the main thread meanwhile."""
    while True:
        with contextlib.suppress(TimeoutError):
            return fut.result(0.25)


def following(target: Task | Process, *, tty: bool) -> contextlib.AbstractContextManager[None]:
    """Forward signals to ``target``, or with ``tty`` keep its pty the size of
    this terminal, for the block. Entered before the process starts, so a
    signal that arrives the moment it runs is not lost."""
    return console(target) if tty else forwarding(target)


def local_tty() -> contextlib.AbstractContextManager[None]:
    """Raw mode on this terminal for the block; UsageError without a terminal."""
    from berth.client import cio

    if not sys.stdin.isatty():
        raise click.UsageError("-t/--tty needs a terminal on stdin")
    return cio.raw_terminal(sys.stdin.fileno())


class CommandNotFound(Failure):
    """The process's command does not exist in the container."""

    exit_code = EXIT_NOT_FOUND


class CommandNotExecutable(Failure):
    """The process's command exists but may not be executed."""

    exit_code = EXIT_NOT_EXECUTABLE


def start_failure(exc: Exception) -> Failure:
    """The failure for a process that could not be created or started, exiting
    127 when its command is missing and 126 when it is not executable, as
    shells (and docker) do; the runtime's own message is kept."""
    from berth.cli import _errors

    text = str(exc) or type(exc).__name__
    cls = Failure
    if re.search(r"executable file not found|no such file or directory", text, re.I):
        cls = CommandNotFound
    elif re.search(r"permission denied", text, re.I):
        cls = CommandNotExecutable
    hint = _errors.hint_for(exc) if isinstance(exc, _errors.errdefs.BerthError) else None
    return cls(text, hint=hint, cause=exc)


# --- option parsing -----------------------------------------------------------------------

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b?)", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``67108864``, ``64m``, ``64MiB`` or ``1g``: a byte count (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a byte count (like 67108864 or 64m)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


class ByteSize(click.ParamType):
    name = "BYTES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        return parse_bytes(str(value))


BYTES = ByteSize()


def io_for(
    *,
    interactive: bool,
    tty: bool,
    null_io: bool,
    log_uri: str | None,
    fifo_dir: str | None,
) -> Callable[[str], Any]:
    """The cio creator the options ask for (as ``ctr``'s ``NewTask`` chooses)."""
    from berth.client import cio

    if tty and (null_io or log_uri):
        raise click.UsageError("--tty cannot be used with --null-io or --log-uri")
    if null_io and log_uri:
        raise click.UsageError("--null-io and --log-uri cannot be used together")
    if log_uri and fifo_dir:
        raise click.UsageError("--log-uri and --fifo-dir cannot be used together")
    if null_io:
        return cio.null_io
    if log_uri:
        return cio.log_uri(log_uri if "://" in log_uri else "file://" + log_uri)
    return cio.stdio(stdin=interactive or tty, terminal=tty, fifo_dir=fifo_dir)


def _io_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("-i", "--interactive", is_flag=True, help="Connect stdin to the process."),
            click.option(
                "-t",
                "--tty",
                is_flag=True,
                help="Give the process a terminal (implies -i); needs one here.",
            ),
            click.option("--null-io", is_flag=True, help="Give the process no I/O at all."),
            click.option(
                "--log-uri",
                metavar="URI",
                help="Have the shim write output to URI: file:///path, binary:///logger?k=v.",
            ),
            click.option("--fifo-dir", metavar="DIR", help="Where to make the I/O FIFOs."),
        ]
    ):
        fn = option(fn)
    return fn


# --- the group -----------------------------------------------------------------------------


@click.group(
    "tasks",
    cls=Group,
    aliases={
        "list": "ls",
        "remove": "rm",
        "delete": "rm",
        "del": "rm",
        "stats": "metrics",
    },
)
def tasks() -> None:
    """Manage tasks: the running processes of containers.

    A container (see `berth containers`) records what to run; its task is
    the running init process, made by `tasks start` (or `berth run`), and
    `tasks exec` adds processes to it. A task must be stopped (or killed,
    with `rm -f`) before it is removed.
    """


@tasks.command("ls")
@quiet_option("task ids")
@format_option
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str) -> None:
    """List tasks: TASK, PID and STATUS, as ctr shows them.

    \b
    Examples:
      berth tasks ls
      berth t ls -q
    """
    items = g.client().tasks.list()
    if quiet:
        for t in items:
            click.echo(t.id)
    elif fmt == "json":
        echo_json(
            [
                {
                    "id": t.id,
                    "pid": t.pid,
                    "status": t.status,
                    "exit_status": t.exit_status,
                    "exited_at": rfc3339(t.exited_at) if t.exited_at else None,
                }
                for t in items
            ]
        )
    else:
        echo_table(("TASK", "PID", "STATUS"), ((t.id, str(t.pid), t.status.upper()) for t in items))


@tasks.command("start")
@_io_options
@click.option("-d", "--detach", is_flag=True, help="Start it and return; do not wait.")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def start(
    g: Globals,
    interactive: bool,
    tty: bool,
    null_io: bool,
    log_uri: str | None,
    fifo_dir: str | None,
    detach: bool,
    container_id: str,
) -> None:
    """Create and start a container's task.

    Runs the container's process with its output here (and stdin with -i),
    waits for it, removes the task and exits with the process's exit code.
    With -d the task keeps running and berth returns at once; `tasks attach`
    reconnects, `tasks rm` removes it later. A terminal is used when the
    container's spec asks for one, or with -t.

    \b
    Examples:
      berth tasks start web
      berth tasks start -d web && berth tasks ls
    """
    box = g.client().load_container(container_id)
    spec = box.info.spec_json or {}
    process = spec.get("process")
    tty = tty or bool(isinstance(process, dict) and process.get("terminal"))
    creator = io_for(
        interactive=interactive, tty=tty, null_io=null_io, log_uri=log_uri, fifo_dir=fifo_dir
    )
    with local_tty() if tty else contextlib.nullcontext():
        task = box.new_task(io=creator, terminal=tty)
        code = run_task(task, tty=tty, detach=detach)
    if code:
        sys.exit(code)


def run_task(task: Task, *, tty: bool, detach: bool) -> int:
    """Start ``task``; unless ``detach``, follow it to its end and delete it.

    A start that fails deletes the task, then raises the failure (127/126 for
    a missing or non-executable command).
    """
    from berth import errdefs

    fut = None if detach else task.wait_in_background()
    with contextlib.nullcontext() if detach else following(task, tty=tty):
        try:
            task.start()
        except errdefs.BerthError as exc:
            with contextlib.suppress(errdefs.BerthError):
                task.delete(force=True)
            raise start_failure(exc) from exc
        if fut is None:
            task.io.cancel()  # our copying ends; the FIFOs stay for `tasks attach`
            return 0
        status = await_exit(fut)
    task.delete()
    return status.code


@tasks.command("attach")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def attach(g: Globals, container_id: str) -> None:
    """Reconnect to a running task's I/O and wait for it to exit.

    Output produced while nobody was attached waits in the FIFO (up to its
    buffer); stdin is connected when the task was started with it. Exits
    with the task's exit code; the task itself is left for `tasks rm`.

    \b
    Examples:
      berth tasks start -d web && berth tasks attach web
    """
    from berth.client import cio

    box = g.client().load_container(container_id)
    state = g.client().tasks.get(container_id)
    tty = state.terminal
    with local_tty() if tty else contextlib.nullcontext():
        task = box.task(attach=cio.attach_stdio(stdin=bool(state.stdin)))
        fut = task.wait_in_background()
        with following(task, tty=tty):
            code = await_exit(fut).code
        task.io.wait(5.0)
        task.io.close()
    if code:
        sys.exit(code)


@tasks.command("exec", context_settings={"allow_interspersed_args": False})
@_io_options
@click.option("-d", "--detach", is_flag=True, help="Start it and return; do not wait.")
@click.option("--exec-id", required=True, metavar="ID", help="The new process's id in the task.")
@click.option("--cwd", metavar="DIR", help="Working directory inside the container.")
@click.option(
    "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable."
)
@click.argument("container_id", metavar="CONTAINER")
@click.argument("args", nargs=-1, required=True)
@pass_globals
def exec_cmd(
    g: Globals,
    interactive: bool,
    tty: bool,
    null_io: bool,
    log_uri: str | None,
    fifo_dir: str | None,
    detach: bool,
    exec_id: str,
    cwd: str | None,
    env: tuple[str, ...],
    container_id: str,
    args: tuple[str, ...],
) -> None:
    """Run another process in a running task.

    The process gets the container's own process settings (user, env,
    capabilities...) with ARGS as its command. berth waits for it, removes
    it and exits with its exit code, unless -d. Options after CONTAINER
    belong to the command.

    \b
    Examples:
      berth tasks exec --exec-id ls1 web ls /
      berth tasks exec -t --exec-id sh1 web sh
      berth t exec --exec-id e2 web ls -l /
    """
    from berth import errdefs

    creator = io_for(
        interactive=interactive, tty=tty, null_io=null_io, log_uri=log_uri, fifo_dir=fifo_dir
    )
    box = g.client().load_container(container_id)
    with local_tty() if tty else contextlib.nullcontext():
        task = box.task()
        process = None
        if tty:
            # The exec'd pty starts at this terminal's size (runtime-spec consoleSize).
            from berth.client import cio
            from berth.client._tasks import _process_spec

            process = _process_spec(box.info, list(args), True, cwd, list(env))
            with contextlib.suppress(OSError):
                cols, rows = cio.terminal_size(sys.stdin.fileno())
                process["consoleSize"] = {"height": rows, "width": cols}
        proc = task.exec(
            exec_id, list(args), io=creator, process=process, terminal=tty, cwd=cwd, env=list(env)
        )
        fut = None if detach else proc.wait_in_background()
        with contextlib.nullcontext() if detach else following(proc, tty=tty):
            try:
                proc.start()
            except errdefs.BerthError as exc:
                with contextlib.suppress(errdefs.BerthError):
                    proc.delete(force=True)
                raise start_failure(exc) from exc
            if fut is None:
                proc.io.cancel()
                return
            code = await_exit(fut).code
        proc.delete()
    if code:
        sys.exit(code)


@tasks.command("kill")
@click.option(
    "-s",
    "--signal",
    "sig",
    metavar="SIGNAL",
    help="Signal to send (default: the image's stop signal, else SIGTERM).",
)
@click.option("-a", "--all", "all_", is_flag=True, help="Signal every process of the container.")
@click.option("--exec-id", metavar="ID", help="Signal this exec'd process instead.")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def kill(g: Globals, sig: str | None, all_: bool, exec_id: str | None, container_id: str) -> None:
    """Send a signal to a task (default: SIGTERM, or the image's StopSignal).

    \b
    Examples:
      berth tasks kill web
      berth tasks kill -s SIGKILL -a web
      berth tasks kill -s HUP --exec-id sh1 web
    """
    from berth import errdefs

    if all_ and exec_id:
        raise click.UsageError("specify an exec-id or all; not both")
    from berth.client._tasks_core import parse_signal

    try:
        # A bad -s is a usage error, found before the daemon is asked anything.
        number = parse_signal(sig) if sig else 0
    except errdefs.InvalidArgument as exc:
        raise click.BadParameter(str(exc), param_hint="'-s'") from None
    box = g.client().load_container(container_id)
    if not number:
        number = parse_signal(box.info.labels.get(STOP_SIGNAL_LABEL) or "SIGTERM")
    task = box.task()
    if exec_id:
        task.load_process(exec_id).kill(number)
    else:
        task.kill(number, all=all_)


@tasks.command("pause")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def pause(g: Globals, container_id: str) -> None:
    """Freeze every process of a task (cgroup freezer)."""
    g.client().load_container(container_id).task().pause()


@tasks.command("resume")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def resume(g: Globals, container_id: str) -> None:
    """Thaw a paused task."""
    g.client().load_container(container_id).task().resume()


@tasks.command("ps")
@format_option
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def ps(g: Globals, fmt: str, container_id: str) -> None:
    """List a task's processes: host PID and the runtime's INFO (an exec id).

    \b
    Examples:
      berth tasks ps web
    """
    procs = g.client().load_container(container_id).task().pids()
    if fmt == "json":
        echo_json([{"pid": p.pid, "info": p.info} for p in procs])
        return

    def info(p: Any) -> str:
        if not p.info:
            return "-"
        return " ".join(f"{k}:{v}" for k, v in sorted(p.info.items()))

    echo_table(("PID", "INFO"), ((str(p.pid), info(p)) for p in procs))


def _metric_rows(m: TaskMetric) -> list[tuple[str, str]]:
    """ctr's METRIC/VALUE rows for cgroups v1 or v2 statistics."""
    s: dict[str, Any] = dict(m.stats or {})

    def get(*path: str) -> Any:
        node: Any = s
        for key in path:
            if not isinstance(node, dict):
                return 0
            node = node.get(key, 0)
        return node

    def num(*path: str) -> str:
        value = get(*path)
        return str(int(value)) if isinstance(value, str | int | float) else "0"

    if m.type_url.endswith("io.containerd.cgroups.v2.Metrics"):
        return [
            ("pids.current", num("pids", "current")),
            ("pids.limit", num("pids", "limit")),
            ("cpu.usage_usec", num("cpu", "usage_usec")),
            ("cpu.user_usec", num("cpu", "user_usec")),
            ("cpu.system_usec", num("cpu", "system_usec")),
            ("cpu.nr_periods", num("cpu", "nr_periods")),
            ("cpu.nr_throttled", num("cpu", "nr_throttled")),
            ("cpu.throttled_usec", num("cpu", "throttled_usec")),
            ("memory.usage", num("memory", "usage")),
            ("memory.usage_limit", num("memory", "usage_limit")),
            ("memory.swap_usage", num("memory", "swap_usage")),
            ("memory.swap_limit", num("memory", "swap_limit")),
        ]
    per_cpu = get("cpu", "usage", "per_cpu")
    per_cpu_text = "[" + " ".join(str(int(x)) for x in per_cpu) + "]" if per_cpu else "[]"
    rows = []
    if "memory" in s:
        rows += [
            ("memory.usage_in_bytes", num("memory", "usage", "usage")),
            ("memory.limit_in_bytes", num("memory", "usage", "limit")),
            ("memory.stat.cache", num("memory", "total_cache")),
        ]
    if "cpu" in s:
        rows += [
            ("cpuacct.usage", num("cpu", "usage", "total")),
            ("cpuacct.usage_percpu", per_cpu_text),
        ]
    if "pids" in s:
        rows += [("pids.current", num("pids", "current")), ("pids.limit", num("pids", "limit"))]
    return rows


@tasks.command("metrics")
@format_option
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def metrics(g: Globals, fmt: str, container_id: str) -> None:
    """Show a task's resource use: memory, CPU and pids counters of its cgroup.

    \b
    Examples:
      berth tasks metrics web
      berth tasks metrics --format json web | jq .stats.memory
    """
    m = g.client().load_container(container_id).task().metrics()
    if fmt == "json":
        echo_json(
            {
                "id": m.id,
                "timestamp": rfc3339(m.timestamp) if m.timestamp else None,
                "type_url": m.type_url,
                "stats": m.stats,
            }
        )
        return
    echo_table(("ID", "TIMESTAMP"), [(m.id, rfc3339(m.timestamp) if m.timestamp else "-")])
    click.echo()
    echo_table(("METRIC", "VALUE"), _metric_rows(m))


@tasks.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill the task (every process) first.")
@click.option("--exec-id", metavar="ID", help="Remove this exec'd process instead.")
@click.argument("ids", metavar="CONTAINER...", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, force: bool, exec_id: str | None, ids: tuple[str, ...]) -> None:
    """Remove stopped tasks (or exec'd processes), printing each id.

    A running task is refused unless -f. With --exec-id only that process
    of the (single) CONTAINER is removed. A task's exit code other than 0
    is reported as a warning. Continues past failures and exits 1 if any.

    \b
    Examples:
      berth tasks rm web
      berth tasks rm -f web db
      berth tasks rm --exec-id sh1 web
    """
    from berth import errdefs
    from berth.cli import _errors

    client = g.client()
    if exec_id:
        if len(ids) != 1:
            raise click.UsageError("--exec-id takes exactly one CONTAINER")
        status = client.load_container(ids[0]).task().load_process(exec_id).delete(force=force)
        click.echo(exec_id)
        if status.code:
            sys.exit(status.code)
        return
    failed: errdefs.BerthError | None = None
    for container_id in ids:
        try:
            status = client.load_container(container_id).task().delete(force=force)
        except errdefs.BerthError as exc:
            failed = failed or exc
            click.echo(f"berth: {container_id}: {exc}", err=True)
            continue
        if status.code:
            click.echo(f"warning: task {container_id} exited with code {status.code}", err=True)
        click.echo(container_id)
    if failed is not None:
        raise _errors.Failure("some tasks could not be removed", cause=failed)


@tasks.command("wait")
@click.option("--exec-id", metavar="ID", help="Wait for this exec'd process instead.")
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def wait(g: Globals, exec_id: str | None, container_id: str) -> None:
    """Wait for a task (or exec'd process) to exit and print its exit code.

    \b
    Examples:
      berth tasks wait web
    """
    task = g.client().load_container(container_id).task()
    target = task.load_process(exec_id) if exec_id else task
    fut = target.wait_in_background()
    with forwarding(target):
        status = await_exit(fut)
    click.echo(status.code)


@tasks.command("update")
@click.option("--memory-limit", type=BYTES, help="Memory limit in bytes (64m, 1g...).")
@click.option(
    "--cpu-quota", type=int, metavar="USEC", help="CPU time per period, in µs (-1: none)."
)
@click.option("--cpu-period", type=click.IntRange(min=1), metavar="USEC", help="CPU period in µs.")
@click.option("--cpu-shares", type=click.IntRange(min=2), metavar="N", help="Relative CPU weight.")
@click.option("--pids-limit", type=int, metavar="N", help="Most processes at once (-1: none).")
@click.option(
    "--resources",
    type=click.File("r"),
    metavar="FILE",
    help="An OCI LinuxResources JSON document (- for stdin); flags override it.",
)
@click.argument("container_id", metavar="CONTAINER")
@pass_globals
def update(
    g: Globals,
    memory_limit: int | None,
    cpu_quota: int | None,
    cpu_period: int | None,
    cpu_shares: int | None,
    pids_limit: int | None,
    resources: Any,
    container_id: str,
) -> None:
    """Change a running task's resource limits.

    \b
    Examples:
      berth tasks update --memory-limit 64m web
      berth tasks update --cpu-quota 50000 --cpu-period 100000 web
    """
    res: dict[str, Any] = {}
    if resources is not None:
        try:
            loaded = json.load(resources)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="'--resources'") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="'--resources'")
        res = loaded
    if memory_limit is not None:
        res.setdefault("memory", {})["limit"] = memory_limit
    cpu = {
        k: v
        for k, v in (("quota", cpu_quota), ("period", cpu_period), ("shares", cpu_shares))
        if v is not None
    }
    if cpu:
        res.setdefault("cpu", {}).update(cpu)
    if pids_limit is not None:
        res["pids"] = {"limit": pids_limit}
    if not res:
        raise click.UsageError("nothing to update: give --memory-limit, --cpu-quota, ...")
    g.client().load_container(container_id).task().update(resources=res)
