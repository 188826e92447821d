"""The default spec matches containerd 1.6's, fact by fact."""

from __future__ import annotations

import json

import pytest

from berth import errdefs, oci
from berth.oci import caps, spec

# containerd 1.6 oci/spec.go, written out independently so a slip in one
# list cannot hide in the other.
CONTAINERD_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
CONTAINERD_MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
CONTAINERD_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@pytest.fixture
def s() -> spec.Spec:
    return oci.default_spec("c1", "ns1")


def test_oci_version_is_the_one_containerd_1_6_writes(s: spec.Spec) -> None:
    assert s["ociVersion"] == "1.0.2-dev"


def test_process_defaults(s: spec.Spec) -> None:
    proc = s["process"]
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["cwd"] == "/"
    assert "terminal" not in proc  # false, left out as Go's omitempty does
    assert proc["noNewPrivileges"] is True
    assert proc["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert "args" not in proc


def test_capabilities_are_containerds_fourteen_in_every_set(s: spec.Spec) -> None:
    capset = s["process"]["capabilities"]
    assert set(capset) == {"bounding", "effective", "permitted"}
    for key in ("bounding", "effective", "permitted"):
        assert capset[key] == CONTAINERD_CAPS


def test_default_caps_give_the_well_known_capeff_mask() -> None:
    mask = sum(1 << caps.KNOWN_CAPABILITIES.index(c) for c in CONTAINERD_CAPS)
    assert mask == 0xA80425FB
    assert caps.from_bitmap(mask) == sorted(CONTAINERD_CAPS, key=caps.KNOWN_CAPABILITIES.index)


def test_root_is_the_bundle_rootfs(s: spec.Spec) -> None:
    assert s["root"] == {"path": "rootfs"}


def test_mounts_are_containerds_list_with_its_options(s: spec.Spec) -> None:
    assert s["mounts"] == [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
    ]


def test_masked_and_readonly_paths(s: spec.Spec) -> None:
    assert s["linux"]["maskedPaths"] == CONTAINERD_MASKED
    assert s["linux"]["readonlyPaths"] == CONTAINERD_READONLY


def test_namespaces_are_pid_ipc_uts_mount_network(s: spec.Spec) -> None:
    assert s["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "network"},
    ]


def test_devices_deny_all_then_allow_the_standard_nodes(s: spec.Spec) -> None:
    def allow(major: int, minor: int | None) -> dict[str, object]:
        rule: dict[str, object] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        return rule

    assert s["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        allow(1, 3),  # null
        allow(1, 8),  # random
        allow(1, 7),  # full
        allow(5, 0),  # tty
        allow(1, 5),  # zero
        allow(1, 9),  # urandom
        allow(5, 1),  # console
        allow(136, None),  # pts
        allow(5, 2),  # ptmx
    ]


def test_cgroups_path_is_namespace_then_id(s: spec.Spec) -> None:
    assert s["linux"]["cgroupsPath"] == "/ns1/c1"


def test_default_spec_carries_the_default_seccomp_profile(s: spec.Spec) -> None:
    assert s["linux"]["seccomp"] == oci.default_profile(s)
    assert s["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_generate_without_options_is_the_default_spec() -> None:
    assert oci.generate("c1", "ns1") == oci.default_spec("c1", "ns1")


def test_default_spec_returns_fresh_lists_each_time() -> None:
    a = oci.default_spec("c1", "ns1")
    a["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    a["mounts"][0]["options"].append("ro")
    b = oci.default_spec("c1", "ns1")
    assert b["process"]["capabilities"]["bounding"] == CONTAINERD_CAPS
    assert b["mounts"][0]["options"] == ["nosuid", "noexec", "nodev"]


def test_dumps_round_trips_as_json(s: spec.Spec) -> None:
    assert json.loads(oci.dumps(s)) == s


def test_missing_namespace_is_failed_precondition() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        oci.default_spec("c1", "")


@pytest.mark.parametrize(
    ("cid", "ns"), [("../escape", "ns"), ("c1", "a/b"), ("", "ns"), ("c1", "..")]
)
def test_names_that_would_bend_the_cgroup_path_are_invalid(cid: str, ns: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.default_spec(cid, ns)


def test_public_api_is_curated() -> None:
    assert sorted(oci.__all__) == sorted(set(oci.__all__))
    for name in oci.__all__:
        assert hasattr(oci, name), name
    public = {n for n in dir(oci) if not n.startswith("_")}
    submodules = {"caps", "opts", "rootfs", "seccomp", "spec", "users", "os", "MutableMapping"}
    assert public - set(oci.__all__) - submodules - {"annotations"} == set()
