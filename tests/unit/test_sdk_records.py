"""``berth.client.types``: every record is public there, whether defined there or
loaded from a private module on first use, and behaves the same either way.

Fresh interpreters check what an import loads; the rest runs here.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import typing
from datetime import UTC, datetime

import pytest

from berth.client import types
from tests.support.daemon import env_with_src

_PRIVATE = ("berth.client._types_daemon", "berth.client._types_images", "berth.client._types_tasks")

_PROBE = """
import json, sys
{setup}
print("@@" + json.dumps(sorted(m for m in sys.modules if m in {private!r})))
"""


def _private_loaded(setup: str) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-c", _PROBE.format(setup=setup, private=_PRIVATE)],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=60,
    )
    _, _, tail = res.stdout.rpartition("@@")
    assert tail, res.stderr
    loaded: list[str] = json.loads(tail)
    return loaded


def test_importing_the_records_and_the_sdk_loads_no_private_record_module() -> None:
    setup = "import berth.client.types, berth.client._sync, berth.client._tasks"
    assert _private_loaded(setup) == []


def test_reading_a_record_loads_only_its_own_module() -> None:
    assert _private_loaded("from berth.client.types import Image") == ["berth.client._types_images"]
    assert _private_loaded("import berth.client.types as t; t.Plugin") == [
        "berth.client._types_daemon"
    ]


def test_every_public_name_resolves_and_records_say_types_is_their_home() -> None:
    for name in types.__all__:
        value = getattr(types, name)
        if isinstance(value, type):
            assert value.__module__ == "berth.client.types", name
            assert value.__qualname__ == name
        assert name in dir(types)


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from berth.client.types import *", namespace)
    assert set(types.__all__) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchRecord"):
        _ = types.NoSuchRecord  # type: ignore[attr-defined]


def test_lazily_loaded_records_pickle_compare_and_print_as_before() -> None:
    desc = types.Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "a" * 64, 9)
    pulled = types.PulledImage(name="x:1", target=desc, unpacked=True, warnings=("w",))
    assert pickle.loads(pickle.dumps(pulled)) == pulled
    assert repr(pulled).startswith("PulledImage(name='x:1', target=Descriptor(")
    metric = types.TaskMetric("c", datetime(2024, 1, 1, tzinfo=UTC), "t", None)
    assert pickle.loads(pickle.dumps(metric)) == metric
    with pytest.raises(AttributeError):
        pulled.name = "y"  # type: ignore[misc]


def test_type_hints_of_lazily_loaded_records_resolve() -> None:
    hints = typing.get_type_hints(types.ImageCheck)
    assert hints["image"] is types.Image
    assert hints["blobs"] == tuple[types.BlobCheck, ...]
    assert typing.get_type_hints(types.TaskMetric)["data"] == types.AnyValue | None
    assert typing.get_type_hints(types.Plugin)["init_error"] == types.PluginError | None
    assert typing.get_type_hints(types.Container)["spec"] == types.AnyValue | None


def test_the_package_and_the_module_hand_out_the_same_classes() -> None:
    import berth.client

    assert berth.client.Image is types.Image
    assert berth.client.SnapshotUsage is types.SnapshotUsage
    assert berth.client.Version is types.Version
