"""Structured, levelled logging to stderr (logfmt or JSON).

Records take key/value context through ``extra={"fields": {...}}`` so every
line stays machine-parseable, the way containerd's logrus output is.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def _quote(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' ="\n\t'):
        return json.dumps(s)
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs * 1000):06d}Z"
        parts = [
            f"time={ts}",
            f"level={record.levelname.lower()}",
            f"msg={_quote(record.getMessage())}",
        ]
        for k, v in (getattr(record, "fields", None) or {}).items():
            parts.append(f"{k}={_quote(v)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        data.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger; ``level`` uses containerd's level names."""
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # grpc's own logger is chatty at debug and speaks in another format.
    logging.getLogger("grpc").setLevel(max(lvl, logging.WARNING))
