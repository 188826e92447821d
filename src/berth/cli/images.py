"""``berth images``: pull, push, unpack, list, tag, check, inspect and remove images.

Pull, push and unpack run in the daemon (Berth's Transfer service): the CLI
only shows progress. Everything else uses containerd's Images and Content
services, so those commands also work against containerd.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from berth.cli._context import Globals, pass_globals
from berth.cli._errors import Failure
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
from berth.cli._progress import (
    choose_mode,
    credentials,
    human_bytes,
    progress_sink,
    registry_options,
)

if TYPE_CHECKING:
    from berth.client import Client
    from berth.client.types import Descriptor, Image, ImageCheck, LayerProgress, UnpackedImage

DEFAULT_SNAPSHOTTER = "overlayfs"
#: What ctr reads its --snapshotter default from; berth's unpacking commands too.
SNAPSHOTTER_ENV = "CONTAINERD_SNAPSHOTTER"

_platform_option = click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="PLATFORM",
    help="Platform such as linux/arm64/v8 (repeatable). Default: the daemon's.",
)


def _descriptor_json(d: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.annotations:
        out["annotations"] = d.annotations
    return out


def _image_json(image: Image) -> dict[str, Any]:
    return {
        "name": image.name,
        "target": _descriptor_json(image.target),
        "labels": image.labels,
        "created_at": rfc3339(image.created_at) if image.created_at else None,
        "updated_at": rfc3339(image.updated_at) if image.updated_at else None,
    }


@click.group(
    "images",
    cls=Group,
    aliases={"list": "ls", "remove": "rm", "delete": "rm", "del": "rm"},
)
def images() -> None:
    """Manage images.

    Images are named references to content: a manifest (or an index of
    manifests, one per platform), its config and its layers. berth asks the
    daemon to pull and push, so registry bytes go straight to the daemon's
    disk and you see progress; the other commands work on the daemon's
    image and content stores. Images live in the namespace chosen with -n.
    """


@images.command("pull")
@_platform_option
@click.option("--all-platforms", is_flag=True, help="Pull every platform of an index.")
@click.option(
    "--unpack/--no-unpack",
    default=True,
    show_default=True,
    help="Unpack the layers into the snapshotter as they arrive.",
)
@click.option(
    "--snapshotter", default="overlayfs", show_default=True, help="Snapshotter to unpack into."
)
@registry_options
@click.option(
    "--max-concurrent-downloads",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Blobs to fetch at once. Default: the daemon's (3).",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label the image.")
@click.option("--quiet", "-q", is_flag=True, help="Show no progress; print only the image name.")
@format_option
@click.argument("ref")
@pass_globals
def pull(
    g: Globals,
    platforms: tuple[str, ...],
    all_platforms: bool,
    unpack: bool,
    snapshotter: str,
    plain_http: bool,
    hosts_dir: str | None,
    user: str | None,
    max_concurrent_downloads: int,
    labels: tuple[str, ...],
    quiet: bool,
    fmt: str,
    ref: str,
) -> None:
    """Pull an image from a registry.

    The daemon fetches REF (HOST/REPOSITORY[:TAG][@DIGEST]) into its content
    store, records the image and, unless --no-unpack, unpacks its layers for
    this host's platform while later layers still download. Progress is
    drawn as bars on a terminal, as one line per blob and status otherwise,
    and as JSON lines with --format json (the last line is the result). An
    interrupted pull leaves nothing referenced; pulling again resumes.

    \b
    Examples:
      berth images pull --plain-http 127.0.0.1:5000/library/busybox:latest
      berth images pull --platform linux/arm64 registry.example.com/app:1.2
      berth images pull --hosts-dir /etc/berth/certs.d -u ci registry.example.com/app:1.2
      berth images pull --format json 127.0.0.1:5000/app:1 | jq -c 'select(.image)'
    """
    if all_platforms and platforms:
        raise click.UsageError("--platform and --all-platforms cannot be used together")
    name, password = credentials(user)
    mode = choose_mode(fmt, quiet)
    started = time.monotonic()
    with progress_sink(mode, f"pull {ref}") as sink:
        image = g.client().pull(
            ref,
            platform=platforms or None,
            all_platforms=all_platforms,
            unpack=unpack,
            snapshotter=snapshotter,
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=name,
            password=password,
            max_concurrent_downloads=max_concurrent_downloads,
            labels=parse_labels(labels, bare=""),
            on_progress=sink,
        )
    elapsed = time.monotonic() - started
    if fmt == "json":
        echo_json(
            {
                "image": _image_json(image),
                "unpacked": image.unpacked,
                "snapshotter": image.snapshotter,
                "warnings": list(image.warnings),
                "elapsed_seconds": round(elapsed, 3),
            }
        )
        return
    for warning in image.warnings:
        click.echo(f"warning: {warning}", err=True)
    if quiet:
        click.echo(image.name)
        return
    unpacked = f", unpacked into {image.snapshotter}" if image.unpacked else ""
    click.echo(f"{image.name}: {image.target.digest}{unpacked} ({elapsed:.1f}s)")


@images.command("push")
@_platform_option
@registry_options
@click.option(
    "--max-concurrent-uploaded-layers",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Blobs to upload at once. Default: the daemon's (3).",
)
@click.option("--quiet", "-q", is_flag=True, help="Show no progress.")
@format_option
@click.argument("remote")
@click.argument("local", required=False)
@pass_globals
def push(
    g: Globals,
    platforms: tuple[str, ...],
    plain_http: bool,
    hosts_dir: str | None,
    user: str | None,
    max_concurrent_uploaded_layers: int,
    quiet: bool,
    fmt: str,
    remote: str,
    local: str | None,
) -> None:
    """Push an image to a registry.

    The daemon uploads the image LOCAL (default: the image named REMOTE) to
    REMOTE, skipping blobs the registry has and mounting those it holds in
    another repository; manifests go last. With --platform only those
    platforms of an index are pushed.

    \b
    Examples:
      berth images push --plain-http 127.0.0.1:5000/team/app:1 app:latest
      berth images tag app:latest registry.example.com/app:1 && berth images push registry.example.com/app:1
    """
    name, password = credentials(user)
    mode = choose_mode(fmt, quiet)
    with progress_sink(mode, f"push {remote}") as sink:
        target = g.client().push(
            remote,
            source=local,
            platform=platforms or None,
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=name,
            password=password,
            max_concurrent_uploads=max_concurrent_uploaded_layers,
            on_progress=sink,
        )
    if fmt == "json":
        echo_json({"name": remote, "target": _descriptor_json(target)})
    elif not quiet:
        click.echo(f"{remote}: {target.digest}")


@images.command("ls")
@quiet_option("image names")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List images.

    Shows ctr's columns: REF, TYPE, DIGEST, SIZE (for this host's platform),
    PLATFORMS and LABELS. FILTERS use containerd's syntax over name,
    target.digest, target.mediatype and labels.KEY; an image is shown if it
    matches any of them.

    \b
    Examples:
      berth images ls
      berth images ls -q 'name~=busybox'
      berth images ls --format json | jq -r '.[].name'
    """
    c = g.client()
    found = c.images.list(filters)
    if quiet:
        for image in found:
            click.echo(image.name)
        return
    summaries = [c.images.summary(image) for image in found]
    if fmt == "json":
        echo_json(
            [
                {**_image_json(i), "size": s.size, "platforms": list(s.platforms)}
                for i, s in zip(found, summaries, strict=True)
            ]
        )
        return
    echo_table(
        ("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"),
        (
            (
                i.name,
                i.target.media_type,
                i.target.digest,
                human_bytes(s.size),
                ",".join(s.platforms) or "-",
                label_string(i.labels, empty="-"),
            )
            for i, s in zip(found, summaries, strict=True)
        ),
    )


@images.command("rm")
@click.option("--sync", is_flag=True, help="Wait until the image's unreferenced content is gone.")
@click.argument("refs", nargs=-1, required=True)
@pass_globals
def rm(g: Globals, sync: bool, refs: tuple[str, ...]) -> None:
    """Remove images.

    Deletes each image named by REFS, printing its name; its content
    becomes garbage once nothing else references it. As ctr does, a name
    that does not exist is reported and the others are still removed; the
    exit status is 1 if any failed.

    \b
    Examples:
      berth images rm 127.0.0.1:5000/app:1
      berth images rm --sync $(berth images ls -q)
    """
    from berth import errdefs

    c = g.client()
    failed: list[str] = []
    for i, ref in enumerate(refs):
        try:
            c.images.delete(ref, sync=sync and i == len(refs) - 1)
        except errdefs.NotFound:
            click.echo(f"berth: {ref}: image not found", err=True)
            failed.append(ref)
            continue
        click.echo(ref)
    if failed:
        raise Failure(f"unable to delete {', '.join(failed)}")


@images.command("tag")
@click.option("--force", is_flag=True, help="Replace TARGET if it already exists.")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@pass_globals
def tag(g: Globals, force: bool, source: str, targets: tuple[str, ...]) -> None:
    """Give an image more names.

    Creates TARGETS pointing at the same content as SOURCE (same target
    descriptor and labels), printing each new name.

    \b
    Examples:
      berth images tag 127.0.0.1:5000/app:1 127.0.0.1:5000/app:latest
      berth images tag --force app:dev app:stable
    """
    c = g.client()
    for target in targets:
        c.images.tag(source, target, force=force)
        click.echo(target)


def _check_row(check: ImageCheck) -> tuple[str, ...]:
    present = check.present
    required = check.required
    have = sum(b.size for b in present)
    need = sum(b.size for b in required)
    if check.available:
        status = f"{check.status} ({len(present)}/{len(required)})"
        size = f"{human_bytes(have)}/{human_bytes(need)}"
    else:
        status = f"{check.status} ({len(present)}/?)"
        size = f"{human_bytes(have)}/?"
    i = check.image
    return (i.name, i.target.media_type, i.target.digest, status, size)


@images.command("check")
@_platform_option
@quiet_option("names of complete images")
@format_option
@click.argument("filters", nargs=-1)
@pass_globals
def check(
    g: Globals, platforms: tuple[str, ...], quiet: bool, fmt: str, filters: tuple[str, ...]
) -> None:
    """Verify images' content.

    For each image matching FILTERS (all by default), reads back every blob
    this host's platform needs (index, manifest, config, layers) and checks
    its digest and size. STATUS is complete, incomplete (blobs missing),
    unavailable (a manifest is missing, so what else is needed is unknown)
    or corrupt (a blob's bytes do not match its digest), with present /
    required blob counts, as ctr shows them. Exits 1 if any image is not
    complete.

    \b
    Examples:
      berth images check
      berth images check -q 'name==127.0.0.1:5000/app:1'
      berth images check --format json | jq '.[] | select(.status != "complete")'
    """
    if len(platforms) > 1:
        raise click.UsageError("images check takes one --platform")
    c = g.client()
    results = [
        c.images.check(image, platform=platforms[0] if platforms else None)
        for image in c.images.list(filters)
    ]
    if quiet:
        for r in results:
            if r.complete:
                click.echo(r.image.name)
    elif fmt == "json":
        echo_json(
            [
                {
                    "name": r.image.name,
                    "status": r.status,
                    "available": r.available,
                    "blobs": [
                        {
                            "digest": b.digest,
                            "media_type": b.media_type,
                            "size": b.size,
                            "status": b.status,
                            **({"actual": b.actual} if b.actual else {}),
                        }
                        for b in r.blobs
                    ],
                }
                for r in results
            ]
        )
    else:
        echo_table(("REF", "TYPE", "DIGEST", "STATUS", "SIZE"), map(_check_row, results))
        for r in results:
            for b in r.blobs:
                if b.status != "ok":
                    detail = f" (its bytes hash to {b.actual})" if b.actual else ""
                    click.echo(f"{r.image.name}: {b.digest}: {b.status}{detail}", err=True)
    bad = [r.image.name for r in results if not r.complete]
    if bad:
        raise Failure(f"{len(bad)} image(s) not complete: {', '.join(bad)}")


@images.command("inspect")
@click.option("--platform", metavar="PLATFORM", help="Manifest to show from an index.")
@click.argument("ref")
@pass_globals
def inspect(g: Globals, platform: str | None, ref: str) -> None:
    """Show an image's record, manifest and config as JSON.

    For an index, the manifest for --platform (default: this host's) is
    shown, and the index itself under "index".

    \b
    Examples:
      berth images inspect 127.0.0.1:5000/app:1
      berth images inspect --platform linux/arm64 app:1 | jq .config.config.Cmd
    """
    details = g.client().images.inspect(ref, platform=platform)
    echo_json(
        {
            **_image_json(details.image),
            "index": details.index,
            "manifest_descriptor": _descriptor_json(details.manifest_descriptor),
            "manifest": details.manifest,
            "config": details.config,
        }
    )


def unpack_image(
    client: Client,
    name: str,
    *,
    snapshotter: str,
    platform: str | None = None,
    quiet: bool = False,
    err: bool = False,
) -> UnpackedImage:
    """Have the daemon unpack ``name``, printing each layer's status change
    (``CHAIN_ID: unpacking``) and a summary line, unless ``quiet``; on stderr
    with ``err``. What ``images unpack``, ``images import`` and ``run`` share."""
    seen: dict[str, str] = {}

    def show(p: LayerProgress) -> None:
        if seen.get(p.chain_id) != p.status:
            seen[p.chain_id] = p.status
            click.echo(f"{p.chain_id}: {p.status}", err=err)

    result = client.images.unpack(
        name,
        snapshotter=snapshotter,
        platform=platform,
        on_progress=None if quiet else show,
    )
    if not quiet:
        how = "unpacked into" if result.unpacked else "already unpacked in"
        top = f" ({result.chain_id})" if result.chain_id else " (no layers)"
        click.echo(f"{result.name}: {how} {result.snapshotter}{top}", err=err)
    return result


@images.command("unpack")
@click.option(
    "--snapshotter",
    envvar=SNAPSHOTTER_ENV,
    show_envvar=True,
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    metavar="NAME",
    help="Snapshotter to unpack into.",
)
@click.option(
    "--platform",
    metavar="PLATFORM",
    help="Platform of the manifest to unpack, e.g. linux/arm64. Default: the daemon's.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the top chain ID.")
@click.argument("ref", metavar="IMAGE")
@pass_globals
def unpack(g: Globals, snapshotter: str, platform: str | None, quiet: bool, ref: str) -> None:
    """Unpack a stored image into a snapshotter.

    The daemon applies the layers of IMAGE's manifest for the platform as
    committed snapshots named by chain ID, so containers can be made from
    it. Use it for images imported with --no-unpack, pulled with
    --no-unpack, or for another snapshotter. Layers already unpacked show
    as "exists" and are left alone: unpacking again is harmless. Prints one
    line per layer and status, then a summary with the top chain ID.

    \b
    Examples:
      berth images unpack docker.io/library/busybox:latest
      berth images unpack --snapshotter native --platform linux/arm64 example.com/app:1
    """
    result = unpack_image(g.client(), ref, snapshotter=snapshotter, platform=platform, quiet=quiet)
    if quiet:
        click.echo(result.chain_id)


images.lazy["import"] = "berth.cli.images_archive:import_cmd"
images.lazy["export"] = "berth.cli.images_archive:export_cmd"
images.lazy["mount"] = "berth.cli.images_mount:mount_cmd"
images.lazy["unmount"] = "berth.cli.images_mount:unmount_cmd"
