"""The SDK imports a service's generated modules only when one of its calls is made.

Importing ``berth.client`` (or its operations, ``_core`` and ``_tasks_core``)
must cost no protobuf work; building a call for one service loads that
service's ``_pb2``/``_pb2_grpc`` and no other. Checked in fresh interpreters,
since this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from berth.client._lazy import LazyModule
from tests.support.daemon import env_with_src

_PROBE = """
import json, sys
{setup}
loaded = sorted(m for m in sys.modules if m.startswith(("grpc", "google.protobuf", "berth.api")))
print("@@" + json.dumps(loaded))
"""


def _loaded(setup: str) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-c", _PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        env=env_with_src(),
        timeout=60,
    )
    _, _, tail = res.stdout.rpartition("@@")
    assert tail, res.stderr
    loaded: list[str] = json.loads(tail)
    return loaded


def test_importing_the_sdk_and_its_operations_imports_no_stubs() -> None:
    setup = "import berth.client, berth.client._core, berth.client._tasks_core, berth.client.cio"
    assert _loaded(setup) == []


def test_a_call_loads_only_its_own_service() -> None:
    setup = (
        "from berth.client import _core\n"
        "call = _core.start(_core.namespaces_list())\n"
        "assert call.stub.__name__ == 'NamespacesStub', call\n"
    )
    services = {m.split(".")[3] for m in _loaded(setup) if m.startswith("berth.api.services.")}
    assert services == {"namespaces"}


def test_a_task_call_loads_the_tasks_service_only() -> None:
    setup = (
        "from berth.client import _core, _tasks_core\n"
        "call = _core.start(_tasks_core.task_start('c1', ''))\n"
        "assert call.stub.__name__ == 'TasksStub', call\n"
    )
    services = {m.split(".")[3] for m in _loaded(setup) if m.startswith("berth.api.services.")}
    assert services == {"tasks"}


def test_lazy_module_imports_on_first_read_and_caches() -> None:
    lazy = LazyModule("berth.api.services.version.v1.version_pb2_grpc")
    stub = lazy.VersionStub
    from berth.api.services.version.v1 import version_pb2_grpc

    assert stub is version_pb2_grpc.VersionStub
    assert vars(lazy)["VersionStub"] is stub
    assert "version_pb2_grpc" in repr(lazy)


def test_lazy_module_raises_attribute_error_for_a_missing_name() -> None:
    lazy = LazyModule("berth.api.services.version.v1.version_pb2_grpc")
    with pytest.raises(AttributeError):
        _ = lazy.NoSuchStub


def test_lazy_module_answers_dunder_probes_without_importing() -> None:
    lazy = LazyModule("berth.api.no.such.module_pb2")
    # copy/pickle/inspect look for dunders; answering them must not import.
    assert not hasattr(lazy, "__wrapped__")
    assert getattr(lazy, "__deepcopy__", None) is None
