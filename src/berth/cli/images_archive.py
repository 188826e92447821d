"""``berth images import`` and ``berth images export``: image archives, as with ctr.

Two click commands meant for the ``images`` group (registered there with
``images.add_command(import_cmd)`` / ``images.add_command(export_cmd)``).
The work happens in the SDK (``Client.import_archive``/``export_archive``),
which reads and writes the tar here and moves blobs through the daemon's
Content service, exactly as ``ctr images import/export`` do. Unlike ctr,
which unpacks imported images itself through the Diff and Snapshots
services, ``import`` then asks the daemon to unpack each image
(``client.images.unpack``), as ``berth images unpack`` does.
"""

from __future__ import annotations

import sys

import click

from berth.cli._context import Globals, pass_globals
from berth.cli.images import DEFAULT_SNAPSHOTTER, SNAPSHOTTER_ENV, unpack_image


@click.command("import")
@click.option(
    "--base-name",
    metavar="NAME",
    help="Repository for names given only as a tag; when set, only images under it are "
    "imported. Default: import-<yyyy-mm-dd>.",
)
@click.option("--digests", is_flag=True, help="Also create <base-name>@<digest> images.")
@click.option(
    "--skip-digest-for-named",
    is_flag=True,
    help="With --digests: only for images the archive does not name.",
)
@click.option("--index-name", metavar="NAME", help="Keep the archive's index as image NAME.")
@click.option("--all-platforms", is_flag=True, help="Import the content of every platform.")
@click.option("--platform", metavar="PLATFORM", help="Import content for PLATFORM only.")
@click.option(
    "--compress-blobs",
    is_flag=True,
    help="Gzip uncompressed layers (Docker archives only).",
)
@click.option("--no-unpack", is_flag=True, help="Only store the content; do not unpack the images.")
@click.option(
    "--snapshotter",
    envvar=SNAPSHOTTER_ENV,
    show_envvar=True,
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    metavar="NAME",
    help="Snapshotter to unpack into.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the image names.")
@click.argument("archive", metavar="IN")
@pass_globals
def import_cmd(
    g: Globals,
    base_name: str | None,
    digests: bool,
    skip_digest_for_named: bool,
    index_name: str | None,
    all_platforms: bool,
    platform: str | None,
    compress_blobs: bool,
    no_unpack: bool,
    snapshotter: str,
    quiet: bool,
    archive: str,
) -> None:
    """Import images from a tar archive.

    IN is the archive's path; - reads standard input.
    Reads OCI image layouts (as written by `ctr images export`, `berth images
    export`, skopeo's oci-archive:) and `docker save` archives (Docker v1.1 and
    v1.2 manifest.json). Each image found is created, or pointed at the new
    content if it exists. Then each image is unpacked into the snapshotter
    for --platform (default: the daemon's), as `ctr images import` does,
    unless --no-unpack; layers already unpacked are left alone.

    \b
    Examples:
      berth images import busybox.tar
      docker save busybox | berth images import -
      berth images import --base-name example.com/app app-oci.tar
      berth images import --no-unpack --all-platforms multi-arch.tar
    """
    if skip_digest_for_named and not digests:
        raise click.UsageError("--skip-digest-for-named must be specified with --digests")
    source = sys.stdin.buffer if archive == "-" else archive
    client = g.client()
    records = client.import_archive(
        source,
        base_name=base_name,
        digests=digests,
        skip_digest_for_named=skip_digest_for_named,
        index_name=index_name,
        all_platforms=all_platforms,
        platform=platform,
        compress_blobs=compress_blobs,
    )
    for record in records:
        if quiet:
            click.echo(record.name)
        else:
            click.echo(f"imported {record.name} ({record.target.digest})")
    if no_unpack:
        return
    for record in records:
        unpack_image(client, record.name, snapshotter=snapshotter, platform=platform, quiet=quiet)


@click.command("export")
@click.option(
    "--skip-manifest-json",
    is_flag=True,
    help="Leave out Docker's manifest.json (docker load then cannot read the file).",
)
@click.option(
    "--skip-non-distributable",
    is_flag=True,
    help="Leave out non-distributable layers (such as Windows base layers).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="PLATFORM",
    help="Export content for PLATFORM (repeatable). Default: the host's platform.",
)
@click.option("--all-platforms", is_flag=True, help="Export the content of every platform.")
@click.argument("out", metavar="OUT")
@click.argument("names", metavar="IMAGE...", nargs=-1, required=True)
@pass_globals
def export_cmd(
    g: Globals,
    skip_manifest_json: bool,
    skip_non_distributable: bool,
    platforms: tuple[str, ...],
    all_platforms: bool,
    out: str,
    names: tuple[str, ...],
) -> None:
    """Export images to an OCI archive.

    OUT is the archive's path; - writes standard output.
    The archive is an OCI image layout, with a Docker manifest.json for the
    chosen platform so `docker load` reads it too. With --all-platforms every
    image of a multi-platform index must be fully present.

    \b
    Examples:
      berth images export busybox.tar docker.io/library/busybox:latest
      berth images export --all-platforms - example.com/app:1 | gzip > app.tar.gz
    """
    if out == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal; redirect it")
    dest = sys.stdout.buffer if out == "-" else out
    g.client().export_archive(
        dest,
        list(names),
        platforms=list(platforms),
        all_platforms=all_platforms,
        docker_manifest=not skip_manifest_json,
        skip_non_distributable=skip_non_distributable,
    )
