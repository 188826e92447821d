"""Mount records and option handling: flags, lowerdir compaction, read-only forms."""

from __future__ import annotations

from berth.core import mountutil
from berth.core.mount import (
    MS_BIND,
    MS_NODEV,
    MS_RDONLY,
    MS_REC,
    Mount,
    compact_lowerdir,
    parse_options,
)
from berth.core.mountutil import readonly


def test_parse_options_splits_flags_from_fs_data() -> None:
    flags, data = parse_options(["ro", "rbind", "nodev", "index=off", "lowerdir=/a:/b"])
    assert flags == MS_RDONLY | MS_BIND | MS_REC | MS_NODEV
    assert data == "index=off,lowerdir=/a:/b"


def test_parse_options_later_rw_clears_ro() -> None:
    flags, data = parse_options(["ro", "rw"])
    assert flags & MS_RDONLY == 0
    assert data == ""


def test_compact_lowerdir_rewrites_relative_to_common_parent() -> None:
    opts = ["index=off", "lowerdir=/r/snapshots/12/fs:/r/snapshots/3/fs:/r/snapshots/100/fs"]
    workdir, out = compact_lowerdir(opts)
    assert workdir == "/r/snapshots/"
    assert out == ["index=off", "lowerdir=12/fs:3/fs:100/fs"]


def test_compact_lowerdir_never_splits_a_path_component() -> None:
    # A character-wise prefix of these is "/r/snapshots/1"; the parent must be
    # the whole component "/r/snapshots".
    workdir, out = compact_lowerdir(["lowerdir=/r/snapshots/12/fs:/r/snapshots/13/fs"])
    assert workdir == "/r/snapshots/"
    assert out == ["lowerdir=12/fs:13/fs"]


def test_compact_lowerdir_leaves_single_or_unrelated_dirs_alone() -> None:
    assert compact_lowerdir(["lowerdir=/a/fs"]) == ("", ["lowerdir=/a/fs"])
    assert compact_lowerdir(["lowerdir=/a/fs:/b/fs"]) == ("", ["lowerdir=/a/fs:/b/fs"])
    assert compact_lowerdir(["ro"]) == ("", ["ro"])


def test_readonly_overlay_moves_upper_to_front_of_lowerdirs() -> None:
    m = Mount(
        "overlay",
        "overlay",
        ["index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"],
    )
    (ro,) = readonly([m])
    assert ro.options == ["index=off", "lowerdir=/s/2/fs:/s/1/fs"]


def test_readonly_bind_replaces_rw_with_ro() -> None:
    (ro,) = readonly([Mount("bind", "/s/1/fs", ["rw", "rbind"])])
    assert ro.options == ["rbind", "ro"]


def test_mountinfo_unescapes_octal_sequences() -> None:
    assert mountutil._unescape(r"/tmp/a\040b\134c") == "/tmp/a b\\c"
    assert mountutil._unescape("/plain") == "/plain"


def test_mount_points_lists_root() -> None:
    assert "/" in mountutil.mount_points()
