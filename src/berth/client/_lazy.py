"""Generated API modules that the SDK names up front but imports on first use.

Each generated ``_pb2``/``_pb2_grpc`` module builds its descriptors when it is
imported (one to three milliseconds apiece here), and the SDK names about
twenty of them, while one CLI command talks to two or three services. A
:class:`LazyModule` stands in for one such module at module level, so the
operations in ``_core`` keep reading ``containers_pb.GetContainerRequest``
while only the services a process actually calls are ever imported.

Type checkers see the real modules: the modules using this import them under
``TYPE_CHECKING`` and bind a :class:`LazyModule` only at run time.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands in for the module ``name``; the first attribute read imports it.

    Each attribute read is cached on the instance, so later reads are plain
    instance lookups. Importing is thread-safe (Python's import lock), and a
    race between two first reads only caches the same object twice.
    """

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        # Only reached for names not cached yet (and never for _lazy_name).
        if attr.startswith("__"):
            # copy, pickle and introspection probe dunders; they must not import.
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self._lazy_name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"
