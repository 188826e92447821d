"""Finding the processes a test started, by what their command lines name."""

from __future__ import annotations

import os
from pathlib import Path


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
