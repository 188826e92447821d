"""Task metrics in containerd's cgroup types, read straight from cgroupfs.

v1 hosts give ``io.containerd.cgroups.v1.Metrics``, v2 hosts
``io.containerd.cgroups.v2.Metrics`` - the messages ``ctr tasks metrics``
decodes. Field meanings follow containerd/cgroups: memory usage, limit,
max usage and failcnt from ``memory.*``; ``total_*`` from the hierarchical
counters of ``memory.stat``; CPU usage in nanoseconds from ``cpuacct``.
"""

from __future__ import annotations

import os

from google.protobuf.message import Message

from berth.api.cgroups.stats.v1 import metrics_pb2 as v1
from berth.api.cgroups.v2.stats import metrics_pb2 as v2
from berth.shim.cgroups import Cgroup, read_int, read_kv, read_text

__all__ = ["metrics", "metrics_v1", "metrics_v2"]

# USER_HZ, which cpuacct.stat counts in, is 100 on every Linux ABI.
_NS_PER_TICK = 10_000_000


def metrics(cgroup: Cgroup) -> Message:
    return metrics_v2(cgroup) if cgroup.unified else metrics_v1(cgroup)


def _p(d: str | None, name: str) -> str:
    return os.path.join(d or "/nonexistent", name)


def metrics_v1(cg: Cgroup) -> v1.Metrics:
    m = v1.Metrics()
    pids = cg.dir("pids")
    if pids and os.path.isdir(pids):
        m.pids.current = read_int(_p(pids, "pids.current"))
        m.pids.limit = read_int(_p(pids, "pids.max"))
    acct = cg.dir("cpuacct")
    if acct and os.path.isdir(acct):
        usage = m.cpu.usage
        usage.total = read_int(_p(acct, "cpuacct.usage"))
        stat = read_kv(_p(acct, "cpuacct.stat"))
        usage.user = stat.get("user", 0) * _NS_PER_TICK
        usage.kernel = stat.get("system", 0) * _NS_PER_TICK
        per_cpu = (read_text(_p(acct, "cpuacct.usage_percpu")) or "").split()
        usage.per_cpu.extend(int(v) for v in per_cpu if v.isdigit())
    cpu = cg.dir("cpu")
    if cpu and os.path.isdir(cpu):
        stat = read_kv(_p(cpu, "cpu.stat"))
        m.cpu.throttling.periods = stat.get("nr_periods", 0)
        m.cpu.throttling.throttled_periods = stat.get("nr_throttled", 0)
        m.cpu.throttling.throttled_time = stat.get("throttled_time", 0)
    mem = cg.dir("memory")
    if mem and os.path.isdir(mem):
        _memory_v1(m.memory, mem)
        oom = read_kv(_p(mem, "memory.oom_control"))
        m.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
        m.memory_oom_control.under_oom = oom.get("under_oom", 0)
        m.memory_oom_control.oom_kill = oom.get("oom_kill", 0)
    blkio = cg.dir("blkio")
    if blkio and os.path.isdir(blkio):
        _blkio_v1(m.blkio, blkio)
    return m


_MEMORY_STAT_FIELDS = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}


def _memory_v1(ms: v1.MemoryStat, mem: str) -> None:
    stat = read_kv(_p(mem, "memory.stat"))
    for key, value in stat.items():
        name = _MEMORY_STAT_FIELDS.get(key)
        if name is None and key.startswith("total_"):
            base = _MEMORY_STAT_FIELDS.get(key.removeprefix("total_"))
            name = f"total_{base}" if base and not base.startswith("hier") else None
        if name is not None:
            setattr(ms, name, value)
    for entry, prefix in (
        (ms.usage, "memory"),
        (ms.swap, "memory.memsw"),
        (ms.kernel, "memory.kmem"),
        (ms.kernel_tcp, "memory.kmem.tcp"),
    ):
        entry.usage = read_int(_p(mem, f"{prefix}.usage_in_bytes"))
        entry.limit = read_int(_p(mem, f"{prefix}.limit_in_bytes"))
        entry.max = read_int(_p(mem, f"{prefix}.max_usage_in_bytes"))
        entry.failcnt = read_int(_p(mem, f"{prefix}.failcnt"))


def _blkio_entries(path: str, out: object) -> None:
    text = read_text(path) or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        try:
            if len(parts) == 3:
                entry = v1.BlkIOEntry(
                    op=parts[1], major=int(major), minor=int(minor), value=int(parts[2])
                )
            else:
                entry = v1.BlkIOEntry(major=int(major), minor=int(minor), value=int(parts[1]))
        except ValueError:
            continue
        out.append(entry)  # type: ignore[attr-defined]


def _blkio_v1(b: v1.BlkIOStat, d: str) -> None:
    # Prefer the throttle counters: CFQ's are absent on modern kernels.
    def pick(name: str) -> str:
        plain = _p(d, f"blkio.{name}")
        throttle = _p(d, f"blkio.throttle.{name.removesuffix('_recursive')}")
        return plain if (read_text(plain) or "").strip() else throttle

    _blkio_entries(pick("io_service_bytes_recursive"), b.io_service_bytes_recursive)
    _blkio_entries(pick("io_serviced_recursive"), b.io_serviced_recursive)
    _blkio_entries(_p(d, "blkio.io_queued_recursive"), b.io_queued_recursive)
    _blkio_entries(_p(d, "blkio.io_service_time_recursive"), b.io_service_time_recursive)
    _blkio_entries(_p(d, "blkio.io_wait_time_recursive"), b.io_wait_time_recursive)
    _blkio_entries(_p(d, "blkio.io_merged_recursive"), b.io_merged_recursive)
    _blkio_entries(_p(d, "blkio.time_recursive"), b.io_time_recursive)
    _blkio_entries(_p(d, "blkio.sectors_recursive"), b.sectors_recursive)


def metrics_v2(cg: Cgroup) -> v2.Metrics:
    m = v2.Metrics()
    d = cg.dir("")
    if not d or not os.path.isdir(d):
        return m
    m.pids.current = read_int(_p(d, "pids.current"))
    m.pids.limit = read_int(_p(d, "pids.max"))
    cpu = read_kv(_p(d, "cpu.stat"))
    m.cpu.usage_usec = cpu.get("usage_usec", 0)
    m.cpu.user_usec = cpu.get("user_usec", 0)
    m.cpu.system_usec = cpu.get("system_usec", 0)
    m.cpu.nr_periods = cpu.get("nr_periods", 0)
    m.cpu.nr_throttled = cpu.get("nr_throttled", 0)
    m.cpu.throttled_usec = cpu.get("throttled_usec", 0)
    fields = set(v2.MemoryStat.DESCRIPTOR.fields_by_name)
    for key, value in read_kv(_p(d, "memory.stat")).items():
        if key in fields:
            setattr(m.memory, key, value)
    m.memory.usage = read_int(_p(d, "memory.current"))
    m.memory.usage_limit = read_int(_p(d, "memory.max"))
    m.memory.swap_usage = read_int(_p(d, "memory.swap.current"))
    m.memory.swap_limit = read_int(_p(d, "memory.swap.max"))
    events = read_kv(_p(d, "memory.events"))
    for key in ("low", "high", "max", "oom", "oom_kill"):
        setattr(m.memory_events, key, events.get(key, 0))
    for line in (read_text(_p(d, "io.stat")) or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        try:
            m.io.usage.append(
                v2.IOEntry(
                    major=int(major),
                    minor=int(minor),
                    rbytes=int(kv.get("rbytes", 0)),
                    wbytes=int(kv.get("wbytes", 0)),
                    rios=int(kv.get("rios", 0)),
                    wios=int(kv.get("wios", 0)),
                )
            )
        except ValueError:
            continue
    return m
