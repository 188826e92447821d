"""containerd 1.6's default seccomp profile, built for one architecture.

The profile is an allow-list: anything not named fails with EPERM. Most of
it is a fixed list of ordinary syscalls; the rest depends on

* the architecture (its seccomp arch tokens and a few arch-only syscalls),
* the kernel (``ptrace`` is only allowed from 4.8, where seccomp can no longer
  be bypassed through it), and
* the container's bounding capabilities: a syscall that only a capability
  makes useful (``mount`` needs CAP_SYS_ADMIN, ``reboot`` CAP_SYS_BOOT, ...)
  is allowed exactly when that capability is held. Without CAP_SYS_ADMIN,
  ``clone`` is allowed only without namespace-creating flags, and ``clone3``
  (whose flags seccomp cannot inspect) fails with ENOSYS so that libcs fall
  back to ``clone``.

Build the profile after the capabilities are final; :func:`berth.oci.generate`
does.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["ALLOWED_SYSCALLS", "default_profile", "go_arch", "kernel_version"]

# Allowed for every container, whatever its capabilities.
ALLOWED_SYSCALLS: tuple[str, ...] = tuple(
    """
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
    fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
    ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
    getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
    io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
    landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
    listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
    membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
    mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
    msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect open
    openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
    pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
    process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
    readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
    sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
    sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
    sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
    semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
    setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
    setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
    setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
    setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socket socketcall socketpair splice stat stat64 statfs
    statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
    utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
    """.split()
)

# personality(2) personas a container may switch to: PER_LINUX, PER_LINUX32,
# PER_LINUX with UNAME26, PER_LINUX32 with UNAME26, and the query value.
_PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

# Seccomp arch tokens by Go GOARCH: the native one plus the compat ABIs its
# kernel also accepts. Architectures missing here get an empty list (the
# runtime then filters the native ABI only), as containerd does.
_ARCHES: dict[str, tuple[str, ...]] = {
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "mips64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mips64n32": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mipsel64": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "mipsel64n32": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}

# Syscalls that exist (or matter) only on some architectures.
_ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "arm": (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
    "amd64": ("arch_prctl", "modify_ldt"),
    "386": ("modify_ldt",),
    "s390": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}
_ARCH_SYSCALLS["arm64"] = _ARCH_SYSCALLS["arm"]
_ARCH_SYSCALLS["s390x"] = _ARCH_SYSCALLS["s390"]

# What each capability unlocks, in the order the capabilities are checked.
_CAP_SYSCALLS: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET | CLONE_NEWCGROUP: the flags that create namespaces.
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
)

_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "386",
    "i686": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv6l": "arm",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "mips64el": "mipsel64",
}


def go_arch(machine: str | None = None) -> str:
    """The Go GOARCH name of ``machine`` (default: this host's ``uname -m``)."""
    machine = (machine or platform.machine()).lower()
    return _MACHINE_TO_GOARCH.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """``(major, minor)`` of a kernel release string (default: the running one).

    None when it cannot be parsed; the profile then leaves ``ptrace`` out, the
    safe side.
    """
    release = release if release is not None else os.uname().release
    parts = release.split(".", 2)
    try:
        major = int(parts[0])
        minor = int("".join(ch for ch in parts[1].split("-")[0] if ch.isdigit()) or "x")
    except (IndexError, ValueError):
        return None
    return major, minor


def _allow(*names: str) -> dict[str, Any]:
    # Go drops the empty "args" list when serialising, so it is absent here.
    return {"names": list(names), "action": "SCMP_ACT_ALLOW"}


def default_profile(
    spec: Mapping[str, Any],
    *,
    arch: str | None = None,
    kernel: tuple[int, int] | Literal["running"] | None = "running",
) -> dict[str, Any]:
    """containerd's default profile for ``spec``'s bounding capabilities.

    ``arch`` is a Go GOARCH name (default: the host's). ``kernel`` is the
    ``(major, minor)`` the profile is for; the default reads the running
    kernel, and None means unknown.
    """
    arch = arch or go_arch()
    if kernel == "running":
        kernel = kernel_version()
    elif isinstance(kernel, str):
        raise ValueError(f"kernel must be (major, minor), None or 'running', not {kernel!r}")

    syscalls: list[dict[str, Any]] = [_allow(*ALLOWED_SYSCALLS)]
    for persona in _PERSONAS:
        rule = _allow("personality")
        rule["args"] = [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]
        syscalls.append(rule)
    if kernel is not None and kernel >= (4, 8):
        syscalls.append(_allow("ptrace"))
    if arch in _ARCH_SYSCALLS:
        syscalls.append(_allow(*_ARCH_SYSCALLS[arch]))

    caps = spec.get("process", {}).get("capabilities", {}).get("bounding") or []
    for cap in caps:
        if cap in _CAP_SYSCALLS:
            syscalls.append(_allow(*_CAP_SYSCALLS[cap]))

    if "CAP_SYS_ADMIN" not in caps:
        # clone's flags are its first argument everywhere but s390, where the
        # stack pointer comes first.
        flags_index = 1 if arch in ("s390", "s390x") else 0
        clone = _allow("clone")
        clone["args"] = [
            {"index": flags_index, "value": CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}
        ]
        syscalls.append(clone)
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})

    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ERRNO"}
    arches = _ARCHES.get(arch, ())
    if arches:
        profile["architectures"] = list(arches)
    profile["syscalls"] = syscalls
    return profile
