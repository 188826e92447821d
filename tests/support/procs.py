"""Finding the processes a test started, by what their command lines name,
asking whether they live and who their parent is, and waiting for them to go."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    # The fields after the command name, which may itself hold spaces or ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def ppid(pid: int) -> int:
    """The parent of ``pid`` (a container's init's parent is its shim)."""
    return int(_stat_fields(pid)[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a test's own temp dir, say).

    Tests look for their leftovers this way, never by program name: other
    tests and other daemons on the host run the same binaries.
    """
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def wait_until(cond: Callable[[], object], timeout: float = 15.0) -> bool:
    """Poll ``cond`` every 20 ms until it holds or ``timeout`` passes; its
    last answer (a process takes a moment to go after it was told to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())
