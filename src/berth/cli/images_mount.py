"""``berth images mount`` and ``berth images unmount``: an image's root filesystem on a directory.

Two click commands for the ``images`` group (attached lazily there, as
``images_archive``'s are). They do what ``ctr images mount/unmount`` do, with
the same names, so each undoes the other's work:

* a lease whose id is the target directory holds the snapshot (24 hours, and
  a ``containerd.io/gc.ref.snapshot.<snapshotter>`` label naming it);
* the snapshot's key is the target directory too: a view of the image's
  chain ID (read-only), or with ``--rw`` an active snapshot on it;
* the mounts are done here, by this process, with mount(2): the daemon only
  hands them out, so this command must run as root on the daemon's host;
* an image not yet unpacked for the snapshotter is unpacked first (by the
  daemon, ``client.images.unpack``), as ctr unpacks before it mounts.

One difference: the target is made absolute before it names anything, so
``unmount`` finds the snapshot from any working directory.
"""

from __future__ import annotations

import os
from datetime import timedelta

import click

from berth import errdefs
from berth.cli._context import Globals, pass_globals
from berth.cli._errors import Failure, from_error

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOTTER_ENV = "CONTAINERD_SNAPSHOTTER"
#: As long as ctr's lease lives: long enough to work in, short enough to expire.
LEASE_EXPIRY = timedelta(hours=24)

_snapshotter_option = click.option(
    "--snapshotter",
    envvar=SNAPSHOTTER_ENV,
    metavar="NAME",
    show_envvar=True,
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    help="Snapshotter the image is unpacked in.",
)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Failure(f"{what} needs root: mount(2) is done by this command, not the daemon")


@click.command("mount")
@_snapshotter_option
@click.option(
    "--rw", is_flag=True, help="Mount read-write (an active snapshot); default read-only."
)
@click.option(
    "--platform",
    metavar="PLATFORM",
    help="Platform of the image to mount, e.g. linux/arm64. Default: the host's.",
)
@click.argument("ref", metavar="IMAGE")
@click.argument("target", metavar="TARGET")
@pass_globals
def mount_cmd(
    g: Globals, snapshotter: str, rw: bool, platform: str | None, ref: str, target: str
) -> None:
    """Mount an image's root filesystem on a directory.

    Makes a snapshot of the unpacked IMAGE (a read-only view, or writable
    with --rw) keyed by the TARGET directory, held by a lease of the same
    name for 24 hours, and mounts it on TARGET, which must exist. Prints the
    image's chain ID, then TARGET. Mounting an image already mounted on
    TARGET reuses its snapshot. Needs root; undo it with `berth images
    unmount --rm TARGET`. An image not yet unpacked for the snapshotter
    (imported with --no-unpack, say) is unpacked first.

    \b
    Examples:
      berth images mount docker.io/library/busybox:latest /mnt/busybox
      berth images mount --rw --snapshotter native example.com/app:1 /mnt/app
    """
    from berth.core import mount as mountmod

    _require_root("mounting an image")
    key = os.path.abspath(target)
    if not os.path.isdir(key):
        raise Failure(f"target {target}: not a directory", hint="create it first: mkdir -p DIR")
    c = g.client()
    config = c.containers.image_config(ref, platform=platform)
    if not config.chain_id:
        raise Failure(f"image {ref} has no layers: there is nothing to mount")
    sn = c.snapshots.with_snapshotter(snapshotter)
    try:
        sn.stat(config.chain_id)
    except errdefs.NotFound:
        # Checked first so the common case costs one Stat, not an unpack
        # round trip; an unpack finding every layer present would be harmless.
        try:
            c.images.unpack(ref, snapshotter=snapshotter, platform=platform)
        except errdefs.BerthError as exc:
            raise from_error(exc, prefix="error unpacking image: ") from exc
    click.echo(config.chain_id)

    created_lease = True
    try:
        c.leases.create(
            key,
            expires=LEASE_EXPIRY,
            labels={f"containerd.io/gc.ref.snapshot.{snapshotter}": key},
        )
    except errdefs.AlreadyExists:
        created_lease = False  # mounted here before: the existing lease holds it
    leased = c.with_lease(key).snapshots.with_snapshotter(snapshotter)
    try:
        try:
            if rw:
                mounts = leased.prepare(key, config.chain_id)
            else:
                mounts = leased.view(key, config.chain_id)
        except errdefs.AlreadyExists:
            mounts = leased.mounts(key)
        try:
            mountmod.mount_all(
                [mountmod.Mount(m.type, m.source, list(m.options)) for m in mounts], key
            )
        except mountmod.MountError as exc:
            # What failed to mount is of no use; leave nothing behind, as ctr.
            try:
                leased.remove(key)
            except errdefs.NotFound:
                pass
            raise Failure(str(exc), cause=exc) from exc
    except BaseException:
        if created_lease:
            try:
                c.leases.delete(key)
            except errdefs.NotFound:
                pass
        raise
    click.echo(target)


@click.command("unmount")
@_snapshotter_option
@click.option("--rm", "remove", is_flag=True, help="Also remove the snapshot and its lease.")
@click.argument("target", metavar="TARGET")
@pass_globals
def unmount_cmd(g: Globals, snapshotter: str, remove: bool, target: str) -> None:
    """Unmount an image mounted with `berth images mount`.

    Unmounts everything mounted on TARGET; with --rm also deletes the lease
    and the snapshot named after TARGET (either already gone is fine), so
    the data written through a --rw mount is gone too. Prints TARGET. Needs
    root.

    \b
    Examples:
      berth images unmount /mnt/busybox
      berth images unmount --rm /mnt/app
    """
    from berth.core import mount as mountmod

    _require_root("unmounting an image")
    key = os.path.abspath(target)
    try:
        mountmod.unmount_all(key)
    except mountmod.MountError as exc:
        raise Failure(str(exc), cause=exc) from exc
    if remove:
        c = g.client()
        try:
            c.leases.delete(key)
        except errdefs.NotFound:
            pass
        except errdefs.BerthError as exc:
            raise from_error(exc, prefix="error deleting lease: ") from exc
        try:
            c.snapshots.with_snapshotter(snapshotter).remove(key)
        except errdefs.NotFound:
            pass
        except errdefs.BerthError as exc:
            raise from_error(exc, prefix="error removing snapshot: ") from exc
    click.echo(target)
