"""Content-store errors that ``berth.errdefs`` has no class for.

containerd's content service answers a write at the wrong offset, and a read
starting past the end of a blob, with gRPC ``OUT_OF_RANGE``. The class lives in
``errdefs`` (so clients can rebuild it from the code) and is re-exported here.
"""

from __future__ import annotations

from berth import errdefs

OutOfRange = errdefs.OutOfRange
CODE_OUT_OF_RANGE = errdefs.CODE_OUT_OF_RANGE


class ShortRead(errdefs.Unavailable):
    """A copy source ended before the expected size was reached.

    A subclass of Unavailable because the condition is transient: the bytes
    written so far stay in the ingest and a retry resumes after them.
    """
