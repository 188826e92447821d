"""`berth images` and `berth content` against a real berthd and registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import Berthd, env_with_src
from tests.support.fixtures import TEST_PASSWORD, TEST_USER, PushedImage, push_to
from tests.support.imagebuilder import Image
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

CONTENT_ROOT = "io.containerd.content.v1.content"


def berth(
    d: Berthd,
    *args: str,
    namespace: str = "default",
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "berth.cli.main", "--address", d.address, "-n", namespace, *args]
    res = subprocess.run(
        cmd, capture_output=True, input=stdin, timeout=120, env=env or env_with_src()
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout!r}\n{res.stderr!r}")
    return res


def out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def test_pull_json_progress_lines_then_ls_inspect_tag_rm(
    shared_berthd: Berthd,
    layered_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(layered_image, repo_name)
    ns = "cli-pull"
    res = berth(shared_berthd, "images", "pull", "--format", "json", pushed.ref, namespace=ns)
    # Not a terminal and --format json: one JSON object per update, then the result.
    text = out(res)
    lines = text.splitlines()
    updates = [json.loads(line) for line in lines if line.startswith('{"key"')]
    assert {u["key"] for u in updates} >= {f"layer-{x.digest}" for x in layered_image.layers}
    result = json.loads(text[text.index('{\n  "image"') :])
    assert result["image"]["target"]["digest"] == layered_image.digest
    assert result["unpacked"] is True

    rows = out(berth(shared_berthd, "images", "ls", namespace=ns)).splitlines()
    assert rows[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert pushed.ref in rows[1] and layered_image.digest in rows[1]
    listed = json.loads(out(berth(shared_berthd, "i", "ls", "--format", "json", namespace=ns)))
    assert listed[0]["size"] == len(layered_image.manifest) + len(layered_image.config) + sum(
        x.size for x in layered_image.layers
    )

    inspected = json.loads(out(berth(shared_berthd, "images", "inspect", pushed.ref, namespace=ns)))
    assert inspected["manifest"] == layered_image.manifest_json
    assert inspected["config"] == layered_image.config_json

    alias = f"{pushed.ref}-alias"
    berth(shared_berthd, "images", "tag", pushed.ref, alias, namespace=ns)
    again = berth(shared_berthd, "images", "tag", pushed.ref, alias, namespace=ns, check=False)
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert out(berth(shared_berthd, "images", "ls", "-q", namespace=ns)).split() == sorted(
        [pushed.ref, alias]
    )
    # ctr sees berth's tag.
    assert alias in shared_berthd.ctr("images", "ls", "-q", namespace=ns).stdout
    gone = berth(shared_berthd, "images", "rm", alias, "nope:1", namespace=ns, check=False)
    assert gone.returncode == 1 and out(gone).split() == [alias]
    assert b"nope:1: image not found" in gone.stderr


def test_pull_plain_lines_when_not_a_terminal(
    shared_berthd: Berthd,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(busybox_image, repo_name)
    text = out(berth(shared_berthd, "images", "pull", "--no-unpack", pushed.ref, namespace="lines"))
    assert f"layer-{busybox_image.layers[0].digest}: done" in text
    assert text.splitlines()[-1].startswith(f"{pushed.ref}: {busybox_image.digest}")


def test_images_check_finds_a_corrupted_blob(
    shared_berthd: Berthd,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(busybox_image, repo_name)
    ns = "cli-check"
    berth(shared_berthd, "content", "fetch", "-q", pushed.ref, namespace=ns)
    ok = out(berth(shared_berthd, "images", "check", namespace=ns))
    assert "complete (2/2)" in ok
    layer = busybox_image.layers[0]
    path = shared_berthd.root / CONTENT_ROOT / "blobs" / "sha256" / layer.digest.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    bad = berth(shared_berthd, "images", "check", namespace=ns, check=False)
    assert bad.returncode == 1
    assert "corrupt (1/2)" in out(bad)
    actual = "sha256:" + hashlib.sha256(bytes(data)).hexdigest()
    assert f"{layer.digest}: corrupt (its bytes hash to {actual})".encode() in bad.stderr
    report = json.loads(
        out(berth(shared_berthd, "images", "check", "--format", "json", namespace=ns, check=False))
    )
    assert report[0]["status"] == "corrupt"
    assert [b["status"] for b in report[0]["blobs"] if b["digest"] == layer.digest] == ["corrupt"]
    # Repair: drop the image and blob, collect, and fetch again.
    berth(shared_berthd, "images", "rm", "--sync", pushed.ref, namespace=ns)
    path.unlink(missing_ok=True)
    berth(shared_berthd, "content", "fetch", "-q", pushed.ref, namespace=ns)


def test_missing_image_is_a_one_line_not_found(
    shared_berthd: Berthd, registry: Registry, repo_name: str
) -> None:
    res = berth(shared_berthd, "images", "pull", f"{registry.host}/{repo_name}:nope", check=False)
    assert res.returncode == 1
    lines = res.stderr.decode().splitlines()
    assert lines[0].startswith("berth: ") and "not found" in lines[0]
    assert b"Traceback" not in res.stderr


def test_user_password_from_env_and_refusal_without_one(
    shared_berthd: Berthd,
    auth_registry: Registry,
    busybox_image: Image,
    repo_name: str,
    tmp_path: Path,
) -> None:
    pushed = push_to(auth_registry, busybox_image, repo_name)
    assert auth_registry.ca_cert is not None
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (hosts / auth_registry.host).mkdir()
    (hosts / auth_registry.host / "hosts.toml").write_text(
        f'server = "https://{auth_registry.host}"\n'
        f'[host."https://{auth_registry.host}"]\n  ca = "{auth_registry.ca_cert}"\n'
    )
    args = ["images", "pull", "--no-unpack", "--hosts-dir", str(hosts)]
    # No password and stdin is not a terminal: a usage error, not a hang.
    res = berth(shared_berthd, *args, "-u", TEST_USER, pushed.ref, check=False)
    assert res.returncode == 2 and b"BERTH_PASSWORD" in res.stderr
    anon = berth(shared_berthd, *args, pushed.ref, check=False)
    assert anon.returncode == 1 and b"unauthorized" in anon.stderr
    env = {**env_with_src(), "BERTH_PASSWORD": TEST_PASSWORD}
    berth(shared_berthd, *args, "-u", TEST_USER, "-q", pushed.ref, env=env, namespace="auth-cli")
    assert TEST_PASSWORD not in shared_berthd.logs()


def test_push_then_content_commands(
    shared_berthd: Berthd,
    registry: Registry,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(busybox_image, repo_name)
    ns = "cli-content"
    berth(shared_berthd, "content", "fetch", "-q", pushed.ref, namespace=ns)
    dest = f"{registry.host}/{repo_name}-pushed:1"
    pushed_out = out(
        berth(shared_berthd, "images", "push", "--format", "json", dest, pushed.ref, namespace=ns)
    )
    # Progress lines first (one JSON object each), then the result, indented.
    result = json.loads(pushed_out[pushed_out.index("{\n") :])
    assert result["target"]["digest"] == busybox_image.digest

    listed = out(berth(shared_berthd, "content", "ls", "-q", namespace=ns)).split()
    assert sorted(listed) == sorted(busybox_image.blobs())
    rows = out(berth(shared_berthd, "content", "ls", namespace=ns)).splitlines()
    assert rows[0].split() == ["DIGEST", "SIZE", "AGE", "LABELS"]
    got = berth(shared_berthd, "content", "get", busybox_image.digest, namespace=ns).stdout
    assert got == busybox_image.manifest

    digest = out(
        berth(
            shared_berthd,
            "content",
            "ingest",
            "--label",
            "containerd.io/gc.root=test",
            "my-blob",
            namespace=ns,
            stdin=b"hello berth",
        )
    ).strip()
    assert digest == "sha256:" + hashlib.sha256(b"hello berth").hexdigest()
    mismatch = berth(
        shared_berthd,
        "content",
        "ingest",
        "--expected-digest",
        "sha256:" + "0" * 64,
        "other-blob",
        namespace=ns,
        stdin=b"x",
        check=False,
    )
    assert mismatch.returncode == 1 and b"unexpected commit digest" in mismatch.stderr
    assert out(berth(shared_berthd, "content", "active", namespace=ns)).split()[:3] == [
        "REF",
        "SIZE",
        "AGE",
    ]
    assert out(berth(shared_berthd, "content", "rm", digest, namespace=ns)).strip() == digest
    # An unlabelled ingest is garbage (as with ctr); prune collects it and
    # only it, since the image still references its content.
    garbage = out(
        berth(shared_berthd, "content", "ingest", "junk", namespace=ns, stdin=b"junk")
    ).strip()
    pruned = out(berth(shared_berthd, "content", "prune", namespace=ns))
    assert "removed" in pruned and "blob(s)" in pruned
    left = out(berth(shared_berthd, "content", "ls", "-q", namespace=ns)).split()
    assert garbage not in left
    assert sorted(left) == sorted(busybox_image.blobs())
