"""What /proc tells the harness: memory, process trees and mounts, plus cleanup.

Memory comes from ``/proc/PID/smaps_rollup`` (one read per process, and it
has PSS, which shares each page among the processes mapping it -- the fair
way to charge a shim whose text is shared by fifty copies of itself).

Cleanup only ever signals processes this run started or that were started on
its behalf by a daemon it started (shims), found by a path unique to the run
in their command line, and always by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Mem",
    "all_pids",
    "comm",
    "descendants",
    "end_pid",
    "mem_of",
    "mounts_under",
    "parent_map",
    "pids_mentioning",
    "ppid",
    "unmount_under",
]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Mem:
    """Resident (RSS) and proportional (PSS) memory, in bytes."""

    rss: int = 0
    pss: int = 0

    def __add__(self, other: Mem) -> Mem:
        return Mem(self.rss + other.rss, self.pss + other.pss)

    def scaled(self, factor: float) -> Mem:
        return Mem(int(self.rss * factor), int(self.pss * factor))


def mem_of(pid: int) -> Mem:
    """RSS and PSS of one process; raises ProcessLookupError when it is gone."""
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0]) * 1024
        elif key == "Pss":
            pss = int(rest.split()[0]) * 1024
    return Mem(rss, pss)


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # comm is in parentheses and may itself hold spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of *pid* (all its threads, live and exited)."""
    fields = _stat_fields(pid)
    # utime and stime are fields 14 and 15 of stat, 12 and 13 after comm.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ppid(pid: int) -> int:
    """Parent PID; raises ProcessLookupError when *pid* is gone."""
    try:
        return int(_stat_fields(pid)[1])
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def parent_map() -> dict[int, int]:
    """{pid: ppid} for every process visible now."""
    out: dict[int, int] = {}
    for pid in all_pids():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            out[pid] = ppid(pid)
    return out


def descendants(root: int, *, prune: Callable[[int], bool] = lambda _pid: False) -> list[int]:
    """*root* and every process below it, skipping subtrees where *prune* is true."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_map().items():
        children.setdefault(parent, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid != root and prune(pid):
            continue
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def pids_mentioning(needle: str) -> list[int]:
    """PIDs whose command line contains *needle* (never this process)."""
    me = os.getpid()
    found = []
    for pid in all_pids():
        if pid == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle.encode() in cmdline:
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def end_pid(pid: int, *, grace: float = 5.0) -> None:
    """SIGTERM *pid*, then SIGKILL after *grace* seconds; returns once it is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # Reap it if it is our child; harmless when it is not.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.02)


def _unescape_mountinfo(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out = []
    i = 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts_under(directory: Path) -> list[str]:
    """Mount points strictly below *directory*, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    points: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape_mountinfo(fields[4])
            if point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def unmount_under(directory: Path) -> list[str]:
    """Unmount everything below *directory*; returns what could not be unmounted."""
    failed: list[str] = []
    for _ in range(3):
        points = mounts_under(directory)
        if not points:
            return []
        failed = []
        for point in points:
            res = subprocess.run(["umount", point], capture_output=True, check=False)
            if res.returncode != 0:
                # Busy: detach it so the directory can still be removed.
                lazy = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
                if lazy.returncode != 0:
                    failed.append(point)
    return failed or mounts_under(directory)
