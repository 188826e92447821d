#!/usr/bin/env python3
"""Regenerate the full-default block of docs/config.md from `berthd config default`.

The block sits between two HTML comment markers, so the prose around it is kept.
tests/unit/test_config_doc.py fails when the block is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"
BEGIN = "<!-- config-default:begin -->"
END = "<!-- config-default:end -->"


def rendered_block() -> str:
    from berth import builtins, config, plugin

    builtins.load()
    text = config.render(config.load(None, plugin.registrations()))
    return f"{BEGIN}\n```toml\n{text}```\n{END}"


def updated(doc: str) -> str:
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + rendered_block() + tail


def main() -> int:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{DOC}: markers missing", file=sys.stderr)
        return 1
    DOC.write_text(updated(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
