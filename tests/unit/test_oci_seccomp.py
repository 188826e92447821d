"""The default seccomp profile: allow-list, arch mapping, cap- and kernel-dependent rules."""

from __future__ import annotations

from typing import Any

import pytest

from berth import oci
from berth.oci import seccomp


def _spec_with_caps(*caps: str) -> oci.Spec:
    return {"process": {"capabilities": {"bounding": list(caps)}}}


def unconditional(profile: dict[str, Any]) -> set[str]:
    """Syscalls allowed with no argument filter."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


@pytest.fixture
def default() -> dict[str, Any]:
    return oci.default_profile(oci.default_spec("c", "ns"), arch="amd64", kernel=(6, 1))


def test_default_action_is_errno_and_amd64_arches(default: dict[str, Any]) -> None:
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert default["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_full_base_allowlist_is_present(default: dict[str, Any]) -> None:
    allowed = unconditional(default)
    assert len(seccomp.ALLOWED_SYSCALLS) == 349
    assert set(seccomp.ALLOWED_SYSCALLS) <= allowed
    for name in ("read", "write", "exit_group", "execve", "openat", "futex", "epoll_pwait2"):
        assert name in allowed
    # The first rule is exactly the base list, in containerd's order.
    assert default["syscalls"][0] == {
        "names": list(seccomp.ALLOWED_SYSCALLS),
        "action": "SCMP_ACT_ALLOW",
    }


def test_dangerous_syscalls_stay_denied_with_default_caps(default: dict[str, Any]) -> None:
    allowed = unconditional(default)
    for name in (
        "kexec_load",
        "open_by_handle_at",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "reboot",
        "init_module",
        "bpf",
        "perf_event_open",
        "settimeofday",
        "acct",
        "iopl",
        "kcmp",
        "clone",
        "clone3",
    ):
        assert name not in allowed, name


def test_chroot_follows_the_default_cap_sys_chroot(default: dict[str, Any]) -> None:
    assert "chroot" in unconditional(default)
    no_chroot = oci.default_profile(_spec_with_caps("CAP_CHOWN"), arch="amd64", kernel=(6, 1))
    assert "chroot" not in unconditional(no_chroot)


def test_clone_without_sys_admin_may_not_create_namespaces(default: dict[str, Any]) -> None:
    (clone,) = rules_for(default, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = rules_for(default, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_s390x_checks_clones_second_argument() -> None:
    profile = oci.default_profile(_spec_with_caps(), arch="s390x", kernel=(6, 1))
    (clone,) = rules_for(profile, "clone")
    assert clone["args"][0]["index"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_S390", "SCMP_ARCH_S390X"]
    assert {"s390_pci_mmio_read", "s390_runtime_instr"} <= unconditional(profile)


def test_sys_admin_unlocks_mount_family_and_plain_clone() -> None:
    profile = oci.default_profile(_spec_with_caps("CAP_SYS_ADMIN"), arch="amd64", kernel=(6, 1))
    allowed = unconditional(profile)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf"} <= allowed
    assert all(not r.get("args") for r in rules_for(profile, "clone"))
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(profile, "clone3"))


@pytest.mark.parametrize(
    ("cap", "syscalls"),
    [
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_PACCT", {"acct"}),
        ("CAP_SYS_PTRACE", {"kcmp", "process_vm_readv", "pidfd_getfd"}),
        ("CAP_SYS_RAWIO", {"iopl", "ioperm"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_TTY_CONFIG", {"vhangup"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_SYSLOG", {"syslog"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
    ],
)
def test_capability_conditional_syscalls(cap: str, syscalls: set[str]) -> None:
    without = unconditional(oci.default_profile(_spec_with_caps(), arch="amd64", kernel=(6, 1)))
    with_cap = unconditional(oci.default_profile(_spec_with_caps(cap), arch="amd64", kernel=(6, 1)))
    assert not syscalls & without
    assert syscalls <= with_cap


def test_kexec_load_is_never_allowed_even_with_every_capability() -> None:
    everything = _spec_with_caps(*oci.caps.KNOWN_CAPABILITIES)
    assert "kexec_load" not in unconditional(
        oci.default_profile(everything, arch="amd64", kernel=(6, 1))
    )


def test_personality_allows_only_known_personas(default: dict[str, Any]) -> None:
    values = [r["args"][0]["value"] for r in rules_for(default, "personality")]
    assert values == [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in rules_for(default, "personality"))


def test_ptrace_needs_kernel_4_8(default: dict[str, Any]) -> None:
    assert "ptrace" in unconditional(default)
    old = oci.default_profile(_spec_with_caps(), arch="amd64", kernel=(4, 4))
    assert "ptrace" not in unconditional(old)
    unknown = oci.default_profile(_spec_with_caps(), arch="amd64", kernel=None)
    assert "ptrace" not in unconditional(unknown)


@pytest.mark.parametrize(
    ("arch", "arches", "extra"),
    [
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], {"arch_prctl"}),
        ("arm64", ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"], {"set_tls", "cacheflush"}),
        ("riscv64", ["SCMP_ARCH_RISCV64"], {"riscv_flush_icache"}),
        ("ppc64le", None, {"swapcontext"}),
        ("386", None, {"modify_ldt"}),
    ],
)
def test_arch_mapping(arch: str, arches: list[str] | None, extra: set[str]) -> None:
    profile = oci.default_profile(_spec_with_caps(), arch=arch, kernel=(6, 1))
    assert profile.get("architectures") == arches
    assert extra <= unconditional(profile)
    if arch != "amd64":
        assert "arch_prctl" not in unconditional(profile)


def test_host_machine_names_map_to_go_arch() -> None:
    assert seccomp.go_arch("x86_64") == "amd64"
    assert seccomp.go_arch("aarch64") == "arm64"
    assert seccomp.go_arch("armv7l") == "arm"
    # The host's profile is built for the host.
    host = oci.default_profile(oci.default_spec("c", "ns"))
    assert host == oci.default_profile(oci.default_spec("c", "ns"), arch=seccomp.go_arch())


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.18.44-fc-v782", (6, 18)), ("4.8.0", (4, 8)), ("5.10-rc1", (5, 10)), ("junk", None)],
)
def test_kernel_version_parsing(release: str, version: tuple[int, int] | None) -> None:
    assert seccomp.kernel_version(release) == version


def test_generate_rebuilds_the_profile_for_the_final_capabilities() -> None:
    spec = oci.generate("c", "ns", oci.with_capabilities(add=["SYS_ADMIN"], drop=["SYS_CHROOT"]))
    allowed = unconditional(spec["linux"]["seccomp"])
    assert "mount" in allowed
    assert "chroot" not in allowed
    assert not [r for r in spec["linux"]["seccomp"]["syscalls"] if r.get("errnoRet")]


def test_unconfined_and_custom_profiles_survive_generate() -> None:
    assert "seccomp" not in oci.generate("c", "ns", oci.with_seccomp_unconfined)["linux"]
    custom = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    spec = oci.generate(
        "c", "ns", oci.with_seccomp_profile(custom), oci.with_capabilities(add=["ALL"])
    )
    assert spec["linux"]["seccomp"] == custom
