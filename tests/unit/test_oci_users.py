"""User resolution against a rootfs, and reads that never leave it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth import errdefs, oci
from berth.oci import rootfs as rootfs_mod
from berth.oci import users

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/:/bin/false
# a comment line
berth:x:1000:1000:berth user:/home/berth:/bin/sh
broken:x:notanumber:0::/:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
daemon:x:1:
berth:x:1000:berth
audio:x:29:berth,daemon
video:x:44:daemon
wheel:x:10:root
nogroup:x:65534:
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/group").write_text(GROUP)
    return r


def resolve(root: Path | None, spec: str) -> tuple[int, int]:
    user = users.resolve_user(str(root) if root else None, spec)
    return user.uid, user.gid


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("berth", (1000, 1000)),
        ("nobody", (65534, 65534)),
        ("1000", (1000, 1000)),  # a uid picks up its passwd gid
        ("4242", (4242, 0)),  # unknown uid: gid 0
        ("berth:audio", (1000, 29)),
        ("berth:44", (1000, 44)),
        ("1000:video", (1000, 44)),
        ("123:456", (123, 456)),
        ("+7", (7, 0)),
    ],
)
def test_resolution_cases(root: Path, spec: str, expected: tuple[int, int]) -> None:
    assert resolve(root, spec) == expected


def test_numeric_pair_needs_no_rootfs() -> None:
    assert resolve(None, "5:6") == (5, 6)


def test_names_need_a_rootfs() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="rootfs absolute path is required"):
        resolve(None, "berth")


@pytest.mark.parametrize("spec", ["ghost", "ghost:audio", "-1", "broken"])
def test_unknown_user_is_not_found(root: Path, spec: str) -> None:
    # "-1" is not an id (out of range), so it is looked up as a name;
    # "broken" has a garbled uid and is skipped rather than read as root.
    with pytest.raises(errdefs.NotFound, match="no users found"):
        resolve(root, spec)


def test_unknown_group_is_not_found(root: Path) -> None:
    with pytest.raises(errdefs.NotFound, match="no groups found: 'ghosts'"):
        resolve(root, "berth:ghosts")


def test_too_many_parts_is_invalid(root: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="invalid USER value"):
        resolve(root, "a:b:c")


def test_missing_passwd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert resolve(tmp_path, "33") == (33, 0)
    with pytest.raises(errdefs.NotFound, match="has no /etc/passwd"):
        resolve(tmp_path, "www-data")


def test_supplementary_groups_list_memberships_but_not_the_own_group(root: Path) -> None:
    assert users.supplementary_gids(str(root), "berth") == [29]
    assert users.supplementary_gids(str(root), 1) == [29, 44]  # daemon, by uid
    assert users.supplementary_gids(str(root), "root") == [10]
    assert users.supplementary_gids(str(root), 4242) == []


# --------------------------------------------------------------------------
# Hostile rootfs layouts
# --------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A passwd file outside the rootfs that must never be read."""
    host = tmp_path / "host" / "etc"
    host.mkdir(parents=True)
    (host / "passwd").write_text("evil:x:0:0::/:/bin/sh\nberth:x:0:0::/:/bin/sh\n")
    return host / "passwd"


def _replace_passwd(root: Path, target: str) -> None:
    (root / "etc/passwd").unlink()
    os.symlink(target, root / "etc/passwd")


def test_absolute_symlink_out_of_the_rootfs_is_resolved_inside_it(
    root: Path, outside: Path
) -> None:
    _replace_passwd(root, str(outside))
    # Inside the rootfs that path does not exist: no users at all.
    with pytest.raises(errdefs.NotFound):
        resolve(root, "evil")
    assert resolve(root, "1000") == (1000, 0)


def test_dotdot_symlink_cannot_climb_out(root: Path, outside: Path) -> None:
    # Enough ".." to reach / from the rootfs on the host, then down to outside.
    _replace_passwd(root, "../" * 40 + str(outside).lstrip("/"))
    with pytest.raises(errdefs.NotFound):
        resolve(root, "evil")


def test_relative_dotdot_via_intermediate_directory_link(root: Path, outside: Path) -> None:
    # /etc itself is a link pointing above the rootfs.
    os.rename(root / "etc", root / "realetc")
    os.symlink("../../host/etc", root / "etc")
    with pytest.raises(errdefs.NotFound):
        resolve(root, "evil")


def test_symlink_to_hosts_own_path_loops_instead_of_reading_the_host(root: Path) -> None:
    # Followed naively from the host this would read the host's /etc/passwd.
    _replace_passwd(root, "/etc/passwd")
    with pytest.raises(errdefs.InvalidArgument, match="too many levels of symbolic links"):
        resolve(root, "root")


def test_symlink_inside_the_rootfs_is_followed(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data/passwd").write_text("app:x:321:654::/:/bin/sh\n")
    _replace_passwd(root, "/data/passwd")
    assert resolve(root, "app") == (321, 654)
    _replace_passwd(root, "../data/./passwd")
    assert resolve(root, "app") == (321, 654)


def test_non_regular_passwd_is_refused(root: Path) -> None:
    (root / "etc/passwd").unlink()
    os.mkfifo(root / "etc/passwd")
    with pytest.raises(errdefs.InvalidArgument, match="not a regular file"):
        resolve(root, "root")


def test_directory_passwd_is_refused(root: Path) -> None:
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="is a directory"):
        resolve(root, "root")


def test_oversized_passwd_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs_mod, "MAX_FILE_SIZE", 64)
    with pytest.raises(errdefs.InvalidArgument, match="larger than 64 bytes"):
        resolve(root, "root")


def test_missing_rootfs_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errdefs.NotFound, match="does not exist"):
        resolve(tmp_path / "nope", "root")


def test_file_used_as_directory_counts_as_missing(root: Path) -> None:
    assert rootfs_mod.read_file_in_root(str(root), "/etc/passwd/x") is None


# --------------------------------------------------------------------------
# Through the options
# --------------------------------------------------------------------------


def _gen(root: Path, *opts: oci.SpecOpt) -> oci.Spec:
    return oci.generate("c", "ns", *opts, rootfs=root)


def test_with_user_sets_ids_and_member_groups(root: Path) -> None:
    user = _gen(root, oci.with_user("berth"))["process"]["user"]
    assert user == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 29]}


def test_with_user_without_supplementary_groups(root: Path) -> None:
    user = _gen(root, oci.with_user("nobody", supplementary=False))["process"]["user"]
    assert user == {"uid": 65534, "gid": 65534, "additionalGids": [65534]}


def test_with_user_uses_absolute_root_path_when_no_rootfs_is_given(root: Path) -> None:
    spec = oci.generate("c", "ns", oci.with_rootfs_path(str(root)), oci.with_user("1000"))
    assert spec["process"]["user"]["uid"] == 1000
    assert spec["process"]["user"]["gid"] == 1000


def test_with_user_numeric_pair_works_without_a_rootfs() -> None:
    user = oci.generate("c", "ns", oci.with_user("7:8"))["process"]["user"]
    assert user == {"uid": 7, "gid": 8, "additionalGids": [8]}


def test_with_user_name_without_rootfs_is_invalid() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="rootfs absolute path is required"):
        oci.generate("c", "ns", oci.with_user("berth"))


def test_with_user_unknown_is_not_found(root: Path) -> None:
    with pytest.raises(errdefs.NotFound, match="'ghost'"):
        _gen(root, oci.with_user("ghost"))


def test_with_additional_groups_by_name_and_number(root: Path) -> None:
    spec = _gen(root, oci.with_user("berth"), oci.with_additional_groups("video", "500"))
    assert spec["process"]["user"]["additionalGids"] == [1000, 29, 44, 500]
    with pytest.raises(errdefs.NotFound, match="unable to find group 'nope'"):
        _gen(root, oci.with_additional_groups("nope"))
