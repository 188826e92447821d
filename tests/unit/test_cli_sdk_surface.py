"""The SDK's public surface: curated exports, and sync/async twins that never drift."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import berth.client
from berth.client import AsyncClient, AsyncLeases, AsyncNamespaces, Client, Leases, Namespaces
from tests.support.daemon import env_with_src

TWINS = [(Client, AsyncClient), (Namespaces, AsyncNamespaces), (Leases, AsyncLeases)]
# Sync/async forms of the same protocol, not twins of each other.
LIFECYCLE = {"__enter__", "__exit__", "__aenter__", "__aexit__"}


def _public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_all_is_curated_and_every_name_resolves() -> None:
    assert sorted(berth.client.__all__) == sorted(berth.client._HOMES)
    for name in berth.client.__all__:
        assert getattr(berth.client, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        berth.client.NoSuchThing  # noqa: B018


@pytest.mark.parametrize(("sync_cls", "async_cls"), TWINS, ids=lambda c: c.__name__)
def test_sync_and_async_twins_have_the_same_methods(sync_cls: type, async_cls: type) -> None:
    assert set(_public(sync_cls)) == set(_public(async_cls))


@pytest.mark.parametrize(("sync_cls", "async_cls"), TWINS, ids=lambda c: c.__name__)
def test_twin_signatures_match(sync_cls: type, async_cls: type) -> None:
    for name in _public(sync_cls):
        s = inspect.signature(getattr(sync_cls, name))
        a = inspect.signature(getattr(async_cls, name))
        assert list(s.parameters.values()) == list(a.parameters.values()), name


def test_client_constructors_match() -> None:
    s = inspect.signature(Client.__init__)
    a = inspect.signature(AsyncClient.__init__)
    assert list(s.parameters.values()) == list(a.parameters.values())


@pytest.mark.parametrize("async_cls", [c for _, c in TWINS], ids=lambda c: c.__name__)
def test_async_calls_are_coroutines(async_cls: type) -> None:
    for name, member in _public(async_cls).items():
        if name.startswith("with_"):
            continue  # views are made synchronously on both clients
        if name == "lease":
            # An async context manager factory.
            assert inspect.isasyncgenfunction(inspect.unwrap(member)), name  # type: ignore[arg-type]
            continue
        assert inspect.iscoroutinefunction(member), name


def test_public_records_import_without_grpc() -> None:
    code = (
        "import sys\n"
        "from berth.client import types, Lease, DEFAULT_ADDRESS\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_with_src(), timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_creating_a_client_does_not_connect() -> None:
    # An absent daemon is reported by the first call, not the constructor.
    with Client("/nonexistent/dir/berth.sock", namespace="x") as c:
        assert c.address == "/nonexistent/dir/berth.sock"
        assert c.namespace == "x"
        view = c.with_namespace("y").with_lease("l1").with_timeout(3)
        assert (view.namespace, view.lease_id, view.timeout) == ("y", "l1", 3)
        assert (c.namespace, c.lease_id, c.timeout) == ("x", None, None)
        view.close()  # a view does not own the connection
