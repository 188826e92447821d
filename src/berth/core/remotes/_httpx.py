"""Loads httpx without its command-line client (import for the side effect).

httpx's package ``__init__`` imports ``httpx._main`` for its ``httpx``
command, and that module pulls in rich, click and pygments: about 5.5 MiB of
Python objects (measured with tracemalloc) that berthd would keep from its
first pull to its exit without ever using them. A ``None`` entry in
``sys.modules`` makes that one import raise ImportError, which httpx handles
by defining a stub ``main`` that tells the user to install ``httpx[cli]``;
the client itself is unchanged. The entry is only added while httpx is not
loaded yet: afterwards it would save nothing and only break a later explicit
``import httpx._main``.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
