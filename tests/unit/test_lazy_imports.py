"""berthd stays small at idle: heavy dependencies load at first use, not at boot.

Registering the plugins in ``berth.builtins.MODULES`` (what berthd and
``berthd config`` do first) and booting them must not import the registry
client (httpx), the image model (manifests, platforms), the layer extractor
(tarfile, isal, zstandard), the TOML parser (only a config file needs it),
uuid (only ``ctr version`` asks for the daemon's UUID) or the metrics server.
Those cost about 4 MiB of RSS that an idle daemon never uses. And when the
registry client does load, httpx must come without its command-line client
(rich, click, pygments: another 5.5 MiB, kept for the daemon's lifetime).
Each check runs in a fresh interpreter, since this test process has imported
everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from berth import builtins
from tests.support.daemon import env_with_src

#: Imported only when a request needs them (a pull, a push, a diff, metrics).
HEAVY = (
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "rich",
    "click",
    "pygments",
    "zstandard",
    "isal",
    "tarfile",
    "prometheus_client",
    "tomllib",
    "uuid",
    "berth.core.images",
    "berth.core.remotes",
    "berth.core.archive",
    "berth.core.diff.walking",
    "berth.core.diff.archive",
    "berth.core.diff.changes",
)

#: Known offenders, heavy module -> the MODULES entry that imports it at module
#: level. Kept exact: once an import moves, this test fails until the entry
#: is removed, so the guard tightens again.
KNOWN: dict[str, str] = {}

# Imports each plugin module in turn and says which one first brought in each
# heavy module.
_REGISTER_PROBE = """
import importlib, json, sys
heavy = {heavy!r}
def loaded():
    return {{h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules)}}
blame = {{}}
for name in {modules!r}:
    before = loaded()
    importlib.import_module(name)
    for h in sorted(loaded() - before):
        blame[h] = name
print("@@" + json.dumps(blame))
"""

# Boots berthd's plugins and gRPC server in-process in a throwaway root, then
# lists the heavy modules present.
_BOOT_PROBE = """
import asyncio, json, shutil, sys, tempfile
from berth import config as configmod
from berth.daemon import Daemon, _registrations
heavy = {heavy!r}
base = tempfile.mkdtemp(prefix="b.", dir="/tmp")
try:
    cfg = configmod.load(None, _registrations())
    cfg.root, cfg.state = base + "/root", base + "/state"
    cfg.grpc.address = base + "/s.sock"
    async def main():
        d = Daemon(cfg)
        await d.start()
        try:
            return sorted(
                h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules)
            )
        finally:
            await d.stop()
    print("@@" + json.dumps(asyncio.run(main())))
finally:
    shutil.rmtree(base, ignore_errors=True)
"""


# Loads the registry client as a first pull does, and lists which of httpx's
# command-line dependencies came with it.
_REMOTES_PROBE = """
import json, sys
import berth.core.remotes
import httpx
client = httpx.Client()  # the client is whole without httpx's CLI
client.close()
cli = [m for m in ("httpx._main", "rich", "click", "pygments") if sys.modules.get(m) is not None]
print("@@" + json.dumps({{"httpx": "httpx" in sys.modules, "cli": cli}}))
"""


def _run(code: str) -> object:
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=120,
    )
    _, sep, tail = res.stdout.rpartition("@@")
    assert res.returncode == 0 and sep, f"probe failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return json.loads(tail)


def test_registering_the_builtin_plugins_imports_no_heavy_module() -> None:
    blame = _run(_REGISTER_PROBE.format(heavy=HEAVY, modules=builtins.MODULES))
    assert isinstance(blame, dict)
    unexpected = {h: m for h, m in blame.items() if KNOWN.get(h) != m}
    assert unexpected == {}, (
        "plugin modules import heavy dependencies at registration "
        f"(move the import into the code that needs it): {unexpected}"
    )
    stale = {h: m for h, m in KNOWN.items() if blame.get(h) != m}
    assert stale == {}, f"no longer imported at registration, drop from KNOWN: {stale}"


@pytest.mark.integration  # boots the real plugins and gRPC server, in a temp root
def test_booted_daemon_has_no_heavy_module_loaded() -> None:
    loaded = _run(_BOOT_PROBE.format(heavy=HEAVY))
    assert isinstance(loaded, list)
    unexpected = sorted(set(loaded) - set(KNOWN))
    assert unexpected == [], f"booting berthd imported {unexpected}: load them at first use"


def test_registry_client_loads_httpx_without_its_command_line_client() -> None:
    assert _run(_REMOTES_PROBE.format()) == {"httpx": True, "cli": []}


# The image model without the layer codecs, as `berth run` reads a manifest
# and a config; then the codecs through the package on first use.
_IMAGES_PROBE = """
import json, sys
import berth.core.images as images
codecs = ("berth.core.images.compression", "gzip", "zstandard", "isal")
before = [m for m in codecs if m in sys.modules]
layer = images.open_layer
after = "berth.core.images.compression" in sys.modules
print("@@" + json.dumps({{"before": before, "after": after, "same": layer is images.open_layer}}))
"""


def test_image_model_loads_layer_codecs_only_on_first_use() -> None:
    assert _run(_IMAGES_PROBE.format()) == {"before": [], "after": True, "same": True}
