"""``berth run``: pull if needed, create a container from an image and run it.

What ``ctr run`` does, in one command: the image is pulled (and unpacked)
when missing, or unpacked when present but not unpacked for the
snapshotter (an image imported with ``--no-unpack``), a writable snapshot is prepared on top of it, the container
is recorded with an OCI spec built from the image's config and the
options, and its task is created with this terminal's I/O attached, started
and waited for. The process's exit code becomes berth's. Signals berth
receives are forwarded to the process; with ``--rm`` the task, container and
snapshot are removed afterwards; with ``-d`` berth prints the id and leaves
the task running.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import click

from berth.cli import tasks as _tasks
from berth.cli._context import Globals, pass_globals
from berth.cli._output import parse_labels
from berth.cli._progress import credentials, progress_sink

if TYPE_CHECKING:
    from berth.client import Client, ContainerHandle, ImageConfig, Mount

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"
PULL_POLICIES = ("missing", "always", "never")


def parse_mount(text: str) -> dict[str, Any]:
    """``type=bind,src=/a,dst=/b,options=rbind:ro`` (ctr's --mount) as a spec mount.

    Keys: ``type``, ``source``/``src``, ``destination``/``dst``/``target``,
    ``options`` (colon-separated). Raises click.BadParameter otherwise.
    """
    mount: dict[str, Any] = {"type": "bind", "options": []}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise click.BadParameter(f"{part!r} is not KEY=VALUE in mount {text!r}")
        if key == "type":
            mount["type"] = value
        elif key in ("source", "src"):
            mount["source"] = value
        elif key in ("destination", "dst", "target"):
            mount["destination"] = value
        elif key == "options":
            mount["options"] = [o for o in value.split(":") if o]
        else:
            raise click.BadParameter(f"unknown key {key!r} in mount {text!r}")
    if not mount.get("destination"):
        raise click.BadParameter(f"mount {text!r} has no dst")
    if mount["type"] == "bind" and not any(o in ("bind", "rbind") for o in mount["options"]):
        mount["options"].insert(0, "rbind")
    return mount


def _mount_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    return [parse_mount(v) for v in values]


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option(
    "--rm", "remove", is_flag=True, help="Remove the task, container and snapshot after it exits."
)
@click.option("-d", "--detach", is_flag=True, help="Start it, print its id and return.")
@click.option("-t", "--tty", is_flag=True, help="Give it a terminal (implies -i); needs one here.")
@click.option("-i", "--interactive", is_flag=True, help="Connect stdin to the process.")
@click.option(
    "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable."
)
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    callback=_mount_option,
    metavar="type=bind,src=SRC,dst=DST,options=OPT:OPT",
    help="Add a mount (ctr's syntax); bind mounts get rbind unless told.",
)
@click.option(
    "--net-host", is_flag=True, help="Use the host's network (and its hosts, resolv.conf)."
)
@click.option("--memory-limit", type=_tasks.BYTES, help="Memory limit in bytes (64m, 1g...).")
@click.option(
    "--user", "-u", "run_user", metavar="USER[:GROUP]", help="User (name or uid) to run as."
)
@click.option("--cwd", metavar="DIR", help="Working directory inside the container.")
@click.option("--runtime", default=DEFAULT_RUNTIME, show_default=True, help="Runtime for the task.")
@click.option(
    "--snapshotter",
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    help="Snapshotter for the rootfs.",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label the container.")
@click.option(
    "--pull",
    type=click.Choice(PULL_POLICIES),
    default="missing",
    show_default=True,
    help="Pull the image: when missing, always, or never.",
)
@click.option(
    "--platform", metavar="OS/ARCH[/VARIANT]", help="Image platform. Default: this host's."
)
@click.option(
    "--plain-http", is_flag=True, help="Pull over HTTP, not HTTPS (loopback hosts always are)."
)
@click.option(
    "--hosts-dir", metavar="DIR", help="Registry hosts.toml directory on the daemon's host."
)
@click.option(
    "--registry-user",
    "registry_user",
    metavar="USER[:PASSWORD]",
    help="Registry credentials for the pull (password from $BERTH_PASSWORD if left out).",
)
@click.option("--null-io", is_flag=True, help="Give the process no I/O at all.")
@click.option(
    "--log-uri", metavar="URI", help="Have the shim write output to URI (file:///path...)."
)
@click.option("--fifo-dir", metavar="DIR", help="Where to make the I/O FIFOs.")
@click.argument("image")
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1)
@pass_globals
def run(
    g: Globals,
    remove: bool,
    detach: bool,
    tty: bool,
    interactive: bool,
    env: tuple[str, ...],
    mounts: list[dict[str, Any]],
    net_host: bool,
    memory_limit: int | None,
    run_user: str | None,
    cwd: str | None,
    runtime: str,
    snapshotter: str,
    labels: tuple[str, ...],
    pull: str,
    platform: str | None,
    plain_http: bool,
    hosts_dir: str | None,
    registry_user: str | None,
    null_io: bool,
    log_uri: str | None,
    fifo_dir: str | None,
    image: str,
    container_id: str,
    args: tuple[str, ...],
) -> None:
    """Run a command in a new container from IMAGE.

    Pulls IMAGE when it is not here (see --pull) and unpacks it when it is
    not unpacked for the snapshotter yet (an image imported with
    --no-unpack), creates container ID on a fresh snapshot of it, and runs
    ARGS (default: the image's command) with this terminal's stdout and
    stderr, and stdin with -i. Waits for it and exits with its exit code;
    signals sent to berth (^C, SIGTERM) are passed to the process. Options
    after IMAGE belong to the command.

    \b
    Examples:
      berth run --rm docker.io/library/busybox:latest hello echo "Hello from Berth"
      echo data | berth run --rm -i busybox:latest cat1 cat
      berth run -t --rm busybox:latest shell sh
      berth run -d --memory-limit 64m busybox:latest web httpd -f
      berth run --rm --mount type=bind,src=/srv,dst=/srv,options=rbind:ro IMG id ls /srv
    """
    from berth import errdefs

    if remove and detach:
        raise click.UsageError("flags --detach and --rm cannot be specified together")
    creator = _tasks.io_for(
        interactive=interactive, tty=tty, null_io=null_io, log_uri=log_uri, fifo_dir=fifo_dir
    )
    client = g.client()
    try:
        client.containers.get(container_id)
    except errdefs.NotFound:
        pass
    else:
        raise errdefs.AlreadyExists(f'container "{container_id}": already exists')
    cfg, pulled = _image(
        client, image, pull, platform, snapshotter, plain_http, hosts_dir, registry_user
    )
    lbls = parse_labels(labels, bare="")
    opts = _options(env, mounts, net_host, memory_limit, run_user, cwd, tty)
    box = _create(
        client,
        cfg,
        container_id,
        list(args),
        opts,
        lbls,
        runtime,
        snapshotter,
        platform,
        # A pull has just unpacked it; an image found here may not be unpacked.
        may_unpack=not pulled,
    )
    code = 0
    # run_task deletes the task when it returns (unless detached), so --rm
    # need not look for it again then.
    task_deleted = False
    try:
        with _tasks.local_tty() if tty else contextlib.nullcontext():
            try:
                task = box.new_task(io=creator, terminal=tty)
            except errdefs.BerthError as exc:
                raise _tasks.start_failure(exc) from exc
            code = _tasks.run_task(task, tty=tty, detach=detach)
            task_deleted = not detach
    finally:
        if remove:
            _remove(box, task_deleted=task_deleted)
    if detach:
        click.echo(container_id)
    if code:
        sys.exit(code)


def _remove(box: ContainerHandle, *, task_deleted: bool) -> None:
    """--rm: the task (killed if still there, as after ^C), then the container
    and its snapshot. Failures are reported, not raised, so the process's own
    outcome stays the one berth reports. ``task_deleted`` skips the lookup of
    a task already deleted; the container's delete still refuses one."""
    from berth import errdefs

    try:
        if not task_deleted:
            with contextlib.suppress(errdefs.NotFound):
                box.task().delete(force=True)
        with contextlib.suppress(errdefs.NotFound):
            box.delete(snapshot_cleanup=True)
    except errdefs.BerthError as exc:
        click.echo(f"berth: removing container {box.id}: {exc}", err=True)


def _image(
    client: Client,
    ref: str,
    pull: str,
    platform: str | None,
    snapshotter: str,
    plain_http: bool,
    hosts_dir: str | None,
    user: str | None,
) -> tuple[ImageConfig, bool]:
    """The image's config, and whether it was pulled (and unpacked) as the policy says."""
    from berth import errdefs

    if pull != "always":
        try:
            return client.containers.image_config(ref, platform=platform), False
        except errdefs.NotFound:
            if pull == "never":
                raise errdefs.NotFound(
                    f"image {ref!r} is not here and --pull never was given: pull or import it first"
                ) from None
    name, password = credentials(user)
    # Progress goes to stderr: stdout belongs to the container.
    mode = "bars" if sys.stderr.isatty() else "lines"
    with contextlib.redirect_stdout(sys.stderr), progress_sink(mode, f"pull {ref}") as sink:
        pulled = client.pull(
            ref,
            platform=platform,
            unpack=True,
            snapshotter=snapshotter,
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=name,
            password=password,
            on_progress=sink,
        )
    for warning in pulled.warnings:
        click.echo(f"warning: {warning}", err=True)
    return client.containers.image_config(pulled.name, platform=platform), True


def _options(
    env: tuple[str, ...],
    mounts: list[dict[str, Any]],
    net_host: bool,
    memory_limit: int | None,
    run_user: str | None,
    cwd: str | None,
    tty: bool,
) -> list[Any]:
    """The spec options after the image's own, in ctr's order."""
    from berth import oci

    opts: list[Any] = []
    if env:
        opts.append(oci.with_env(list(env)))
    if mounts:
        opts.append(oci.with_mounts(mounts))
    if net_host:
        opts.append(oci.with_host_network)
    if memory_limit is not None:
        opts.append(oci.with_memory_limit(memory_limit))
    if run_user:
        opts.append(oci.with_user(run_user))
    if cwd:
        opts.append(oci.with_process_cwd(cwd))
    if tty:
        opts.append(oci.with_tty)
        opts.append(_with_console_size)
    return opts


def _with_console_size(spec: dict[str, Any], ctx: Any) -> None:
    """Create the pty at this terminal's size (runtime-spec ``consoleSize``),
    so the first thing the process runs already sees it; SIGWINCH keeps it
    in step afterwards."""
    from berth.client import cio

    with contextlib.suppress(OSError):
        cols, rows = cio.terminal_size(sys.stdin.fileno())
        spec.setdefault("process", {})["consoleSize"] = {"height": rows, "width": cols}


def _create(
    client: Client,
    cfg: ImageConfig,
    container_id: str,
    args: list[str],
    opts: list[Any],
    labels: dict[str, str],
    runtime: str,
    snapshotter: str,
    platform: str | None,
    *,
    may_unpack: bool,
) -> ContainerHandle:
    """Prepare the rootfs snapshot and record the container, under a lease so a
    failure leaves only garbage. The handle is built from Create's reply,
    which is the stored record, so it is not read back again.

    An image present but not unpacked for the snapshotter (imported with
    --no-unpack) is unpacked for ``platform`` first when ``may_unpack``.
    prepare_rootfs looks for the image's top snapshot anyway and says
    FailedPrecondition when it is missing, so an unpacked image, the usual
    case, costs no lookup of its own.
    """
    from berth import errdefs
    from berth.client import ContainerHandle

    with client.lease() as leased:
        try:
            mounts = leased.containers.prepare_rootfs(container_id, cfg, snapshotter=snapshotter)
        except errdefs.FailedPrecondition:
            if not may_unpack:
                raise
            # Imported only here: the images CLI is not needed when nothing is unpacked.
            from berth.cli.images import unpack_image

            # Progress goes to stderr: stdout belongs to the container.
            unpack_image(client, cfg.name, snapshotter=snapshotter, platform=platform, err=True)
            mounts = leased.containers.prepare_rootfs(container_id, cfg, snapshotter=snapshotter)
        spec = _spec(leased, cfg, container_id, args, opts, mounts, labels)
        info = leased.containers.create(
            container_id,
            spec=spec,
            runtime=runtime,
            image=cfg.name,
            labels=labels,
            snapshotter=snapshotter,
            snapshot_key=container_id,
        )
    return ContainerHandle(client, info)


def _spec(
    client: Client,
    cfg: ImageConfig,
    container_id: str,
    args: list[str],
    opts: list[Any],
    mounts: list[Mount],
    labels: dict[str, str],
) -> dict[str, Any]:
    """The spec from the image config and ``opts``; users resolve in the mounted rootfs."""
    from berth import oci
    from berth.core import mount as mountmod
    from berth.core.mountutil import with_temp_mount

    core_mounts = [mountmod.Mount(m.type, m.source, list(m.options)) for m in mounts]
    # Read-only: reading /etc/passwd must not leave traces in the container's layer.
    with with_temp_mount(core_mounts, read_only=True) as root:
        spec: dict[str, Any] = oci.generate(
            container_id,
            client.namespace,
            oci.with_image_config(cfg.config, args=args or None),
            *opts,
            rootfs=root,
            labels=labels,
        )
    return spec
