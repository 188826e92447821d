"""``berth containers``: create, list, inspect, label and remove container records.

A container here is metadata -- an OCI spec, a runtime and a root filesystem
snapshot -- not a running process; tasks are started from it separately.
``create`` builds the spec the way ``ctr containers create`` does: from the
image's config, with users and groups resolved inside the image's own
filesystem, which it mounts briefly on this host (so it needs root, as ctr
does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._group import Group
from berth.cli._output import (
    echo_json,
    echo_table,
    format_option,
    label_string,
    parse_labels,
    quiet_option,
    rfc3339,
)

if TYPE_CHECKING:
    from berth.client import Client, Container, ImageConfig

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"


@click.group(
    "containers",
    cls=Group,
    aliases={"list": "ls", "remove": "rm", "delete": "rm", "del": "rm"},
)
def containers() -> None:
    """Manage containers (metadata only; tasks run them).

    A container records what a task will be made from: the OCI runtime
    spec, the runtime that runs it, and the snapshot that is its root
    filesystem. Containers live in the namespace chosen with -n and keep
    their snapshot from garbage collection until they are removed.
    """


def _record(c: Container) -> dict[str, Any]:
    return {
        "id": c.id,
        "image": c.image,
        "runtime": {"name": c.runtime},
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "labels": c.labels,
        "created_at": rfc3339(c.created_at) if c.created_at else None,
        "updated_at": rfc3339(c.updated_at) if c.updated_at else None,
        "extensions": sorted(c.extensions),
        "spec": c.spec_json,
    }


@containers.command("ls")
@quiet_option("container ids")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List containers.

    FILTERS use containerd's filter syntax over the fields "id", "image",
    "runtime.name" and "labels.KEY"; a container is shown if it matches any
    of them. The table has ctr's columns: CONTAINER, IMAGE and RUNTIME.

    \b
    Examples:
      berth containers ls
      berth c ls 'labels."team"==web'
      berth c ls -q image~=busybox
    """
    items = g.client().containers.list(filters)
    if quiet:
        for c in items:
            click.echo(c.id)
    elif fmt == "json":
        echo_json([_record(c) for c in items])
    else:
        echo_table(
            ("CONTAINER", "IMAGE", "RUNTIME", "LABELS"),
            ((c.id, c.image or "-", c.runtime, label_string(c.labels, empty="-")) for c in items),
        )


@containers.command("info")
@click.option("--spec", "spec_only", is_flag=True, help="Print only the OCI spec.")
@click.argument("container_id", metavar="ID")
@pass_globals
def info(g: Globals, spec_only: bool, container_id: str) -> None:
    """Show a container as JSON.

    Prints the container's record with its OCI spec decoded, or with --spec
    only the spec.

    \b
    Examples:
      berth containers info web
      berth c info --spec web | jq .process.args
    """
    c = g.client().containers.get(container_id)
    echo_json(c.spec_json if spec_only else _record(c))


@containers.command("create")
@click.option(
    "--snapshotter",
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    help="Snapshotter the image is unpacked for; the rootfs snapshot is made there.",
)
@click.option("--runtime", default=DEFAULT_RUNTIME, show_default=True, help="Runtime for tasks.")
@click.option(
    "--platform",
    default=None,
    metavar="OS/ARCH[/VARIANT]",
    help="Image platform to use. Default: this host's.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label for the container; repeat for more.",
)
@click.option(
    "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable."
)
@click.argument("image")
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1)
@pass_globals
def create(
    g: Globals,
    snapshotter: str,
    runtime: str,
    platform: str | None,
    labels: tuple[str, ...],
    env: tuple[str, ...],
    image: str,
    container_id: str,
    args: tuple[str, ...],
) -> None:
    """Create a container from an unpacked image.

    Makes a writable snapshot named ID on top of IMAGE's unpacked layers,
    builds the OCI spec from the image's config (entrypoint, command, env,
    working directory, user), and records the container. ARGS replace the
    image's command. The image must already be pulled and unpacked for the
    snapshotter; nothing is started.

    \b
    Examples:
      berth containers create docker.io/library/busybox:latest web
      berth c create --label team=web busybox:latest sh1 sh -c 'echo hi'
    """
    c = g.client()
    cfg = c.containers.image_config(image, platform=platform)
    lbls = parse_labels(labels, bare="")
    # The lease protects the new snapshot until the container references it;
    # if anything below fails, the snapshot is garbage once the lease goes.
    with c.lease() as leased:
        mounts = leased.containers.prepare_rootfs(container_id, cfg, snapshotter=snapshotter)
        spec = _spec(leased, cfg, container_id, list(args), list(env), mounts, lbls)
        leased.containers.create(
            container_id,
            spec=spec,
            runtime=runtime,
            image=image,
            labels=lbls,
            snapshotter=snapshotter,
            snapshot_key=container_id,
        )
    click.echo(container_id)


def _spec(
    client: Client,
    cfg: ImageConfig,
    container_id: str,
    args: list[str],
    env: list[str],
    mounts: list[Any],
    labels: dict[str, str],
) -> dict[str, Any]:
    """The spec from the image config, with users resolved in the mounted rootfs."""
    from berth import oci
    from berth.core import mount as mountmod
    from berth.core.mountutil import with_temp_mount

    opts = [oci.with_image_config(cfg.config, args=args or None)]
    if env:
        opts.append(oci.with_env(env))
    core_mounts = [mountmod.Mount(m.type, m.source, list(m.options)) for m in mounts]
    # Read-only: reading /etc/passwd must not leave traces in the container's layer.
    with with_temp_mount(core_mounts, read_only=True) as root:
        spec: dict[str, Any] = oci.generate(
            container_id, client.namespace, *opts, rootfs=root, labels=labels
        )
    return spec


@containers.command("label")
@click.argument("container_id", metavar="ID")
@click.argument("labels", nargs=-1)
@pass_globals
def label(g: Globals, container_id: str, labels: tuple[str, ...]) -> None:
    """Set or clear a container's labels.

    LABELS are KEY=VALUE pairs; KEY= or a bare KEY clears that label (as with
    ctr). Other labels stay. Prints the resulting labels.

    \b
    Examples:
      berth containers label web team=web
      berth c label web team=
    """
    c = g.client().containers.label(container_id, parse_labels(labels, bare=""))
    click.echo(label_string(c.labels))


@containers.command("rm")
@click.argument("ids", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, ids: tuple[str, ...]) -> None:
    """Delete containers.

    Deletes each container named by IDS, printing its id as it goes. A
    container's snapshot is not removed here: it becomes garbage and the
    daemon's collector reclaims it. Stops at the first container that cannot
    be deleted, such as one that does not exist.

    \b
    Examples:
      berth containers rm web
      berth c rm $(berth c ls -q)
    """
    client = g.client()
    for container_id in ids:
        client.containers.delete(container_id)
        click.echo(container_id)
