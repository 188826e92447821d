"""An in-memory :class:`~berth.core.content.store.LabelStore`.

For tests and standalone use; the daemon keeps labels in its metadata layer.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from berth.core.content.digest import Digest


class MemoryLabelStore:
    """Labels per digest in a dict, guarded by a lock."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._labels: dict[Digest, dict[str, str]] = {}

    def get(self, digest: Digest) -> dict[str, str]:
        with self._mu:
            return dict(self._labels.get(digest, {}))

    def set(self, digest: Digest, labels: Mapping[str, str]) -> None:
        with self._mu:
            self._labels[digest] = dict(labels)

    def update(self, digest: Digest, labels: Mapping[str, str]) -> dict[str, str]:
        with self._mu:
            current = self._labels.setdefault(digest, {})
            for key, value in labels.items():
                if value:
                    current[key] = value
                else:
                    current.pop(key, None)
            return dict(current)
