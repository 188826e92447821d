"""docs/config.md carries the current `berthd config default` output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_config_doc.py"


def test_config_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_config_doc", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = mod.DOC.read_text()
    assert mod.updated(doc) == doc, "docs/config.md is stale: run scripts/gen_config_doc.py"
