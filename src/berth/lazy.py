"""Package attributes that import their home submodule on first read (PEP 562).

Several packages name, up front, things whose modules are costly to import
and that most processes never use (the CLI reads manifests but never
decompresses a layer). :func:`attributes` builds such a package's
``__getattr__``: a name's first read imports the submodule that defines it
and binds the value in the package, so later reads are plain lookups.
Imports nothing beyond the standard library's importlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def attributes(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps each lazy name
    to the submodule (relative to ``package``) that defines it; ``namespace``
    is the package's ``globals()``, where each value is bound once read."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return __getattr__
