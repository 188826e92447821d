"""The SDK's I/O-free core: each operation's requests, decoding, and error handling.

Operations are generators, so these tests play the daemon's part by hand:
they inspect each Call an operation makes and send back a response (or throw
an error), with no channel involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from berth import errdefs
from berth.api.services.introspection.v1 import introspection_pb2 as intro_pb
from berth.api.services.leases.v1 import leases_pb2 as leases_pb
from berth.api.services.namespaces.v1 import namespace_pb2 as ns_pb
from berth.api.types import platform_pb2
from berth.client import _config, _core, types


def drive(op: _core.Op[Any], *replies: Any) -> tuple[list[_core.Call], Any]:
    """Run ``op``, answering its calls in order; an exception reply is thrown in."""
    calls: list[_core.Call] = []
    answers: Iterator[Any] = iter(replies)
    step = _core.start(op)
    while isinstance(step, _core.Call):
        calls.append(step)
        reply = next(answers)
        if isinstance(reply, BaseException):
            step = _core.resume(op, error=reply)
        else:
            step = _core.resume(op, reply)
    assert next(answers, None) is None, "operation made fewer calls than expected"
    return calls, step.value


def test_namespace_label_sends_one_masked_update() -> None:
    reply = ns_pb.UpdateNamespaceResponse(namespace=ns_pb.Namespace(name="n", labels={"a": "1"}))
    calls, ns = drive(_core.namespaces_label("n", {"a": "1", "b": ""}), reply)
    assert [c.method for c in calls] == ["Update"]
    req = calls[0].request
    assert sorted(req.update_mask.paths) == ["labels.a", "labels.b"]
    assert dict(req.namespace.labels) == {"a": "1", "b": ""}
    assert ns == types.Namespace("n", {"a": "1"})


def test_namespace_label_with_nothing_to_change_never_sends_an_empty_mask() -> None:
    # An Update without a mask would wipe every label: ask for the namespace instead.
    reply = ns_pb.GetNamespaceResponse(namespace=ns_pb.Namespace(name="n", labels={"k": "v"}))
    calls, ns = drive(_core.namespaces_label("n", {}), reply)
    assert [c.method for c in calls] == ["Get"]
    assert ns.labels == {"k": "v"}


def test_namespace_update_falls_back_to_get_when_server_answers_empty() -> None:
    # containerd answers Update with an empty message.
    got = ns_pb.GetNamespaceResponse(namespace=ns_pb.Namespace(name="n", labels={"z": "1"}))
    calls, ns = drive(
        _core.namespaces_replace_labels("n", {"z": "1"}), ns_pb.UpdateNamespaceResponse(), got
    )
    assert [c.method for c in calls] == ["Update", "Get"]
    assert not calls[0].request.HasField("update_mask")
    assert ns == types.Namespace("n", {"z": "1"})


def test_namespaces_are_listed_sorted() -> None:
    reply = ns_pb.ListNamespacesResponse(
        namespaces=[ns_pb.Namespace(name="b"), ns_pb.Namespace(name="a", labels={"x": "y"})]
    )
    _, items = drive(_core.namespaces_list(), reply)
    assert [n.name for n in items] == ["a", "b"]
    assert items[0].labels == {"x": "y"}


def _lease_reply(req: leases_pb.CreateRequest) -> leases_pb.CreateResponse:
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=500_000_000)
    return leases_pb.CreateResponse(
        lease=leases_pb.Lease(id=req.id, created_at=ts, labels=dict(req.labels))
    )


def test_lease_create_generates_a_valid_id_and_expiry_label() -> None:
    from berth import identifiers

    op = _core.leases_create(None, timedelta(hours=1), {"team": "x"})
    call = _core.start(op)
    assert isinstance(call, _core.Call) and call.method == "Create"
    identifiers.validate(call.request.id)
    expire = datetime.fromisoformat(call.request.labels[types.LEASE_EXPIRE_LABEL])
    assert abs(expire - datetime.now(UTC) - timedelta(hours=1)) < timedelta(seconds=5)
    done = _core.resume(op, _lease_reply(call.request))
    assert isinstance(done, _core.Done)
    lease = done.value
    assert lease.id == call.request.id and lease.labels["team"] == "x"
    assert lease.created_at == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert lease.expires_at == expire


@pytest.mark.parametrize("expires", [None, 0, timedelta(0), -5])
def test_lease_without_positive_expiry_has_no_expire_label(expires: Any) -> None:
    call = _core.start(_core.leases_create("l", expires, None))
    assert isinstance(call, _core.Call)
    assert call.request.id == "l"
    assert types.LEASE_EXPIRE_LABEL not in call.request.labels


def test_expiry_label_is_rfc3339_utc() -> None:
    now = datetime(2024, 1, 1, 23, 30, tzinfo=UTC)
    assert _core.expiry_label(3600, now=now) == "2024-01-02T00:30:00Z"


def test_quiet_lease_delete_swallows_not_found_only() -> None:
    calls, value = drive(_core.leases_delete_quietly("l"), errdefs.NotFound("gone"))
    assert value is None and calls[0].request.id == "l"
    with pytest.raises(errdefs.Unavailable):
        drive(_core.leases_delete_quietly("l"), errdefs.Unavailable("down"))


def test_errors_propagate_out_of_operations_unchanged() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="must be empty"):
        drive(_core.namespaces_delete("n"), errdefs.FailedPrecondition("must be empty"))


def test_plugins_decode_status_platforms_and_errors() -> None:
    reply = intro_pb.PluginsResponse(
        plugins=[
            intro_pb.Plugin(
                type="io.containerd.snapshotter.v1",
                id="overlayfs",
                platforms=[
                    platform_pb2.Platform(os="linux", architecture="arm", variant="v7"),
                    platform_pb2.Platform(os="linux", architecture="amd64"),
                ],
            ),
            intro_pb.Plugin(
                type="t",
                id="skipped",
                init_err=status_pb2.Status(code=9, message="no btrfs: skip plugin"),
            ),
            intro_pb.Plugin(type="t", id="broken", init_err=status_pb2.Status(code=2, message="x")),
        ]
    )
    calls, items = drive(_core.plugins(["type==t"]), reply)
    assert list(calls[0].request.filters) == ["type==t"]
    assert [p.status for p in items] == ["ok", "skip", "error"]
    assert [str(x) for x in items[0].platforms] == ["linux/arm/v7", "linux/amd64"]
    assert items[2].init_error == types.PluginError(code=2, message="x")


def test_a_bare_string_is_refused_as_a_filter_list() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        _core.start(_core.leases_list("id==x"))


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("/run/berth/berth.sock", "unix:/run/berth/berth.sock"),
        ("unix:///run/x.sock", "unix:///run/x.sock"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("127.0.0.1:9000", "127.0.0.1:9000"),
        ("dns:///localhost:1", "dns:///localhost:1"),
    ],
)
def test_grpc_target(address: str, target: str) -> None:
    assert _core.grpc_target(address) == target


def test_relative_socket_path_is_made_absolute(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert _core.grpc_target("d.sock") == f"unix:{tmp_path}/d.sock"


def test_metadata_carries_namespace_and_optional_lease() -> None:
    assert _core.metadata("ns", None) == (("containerd-namespace", "ns"),)
    assert _core.metadata("ns", "l") == (
        ("containerd-namespace", "ns"),
        ("containerd-lease", "l"),
    )


def test_connect_failure_is_reworded_to_name_the_daemon() -> None:
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: unix:/x.sock: "
        "connect failed: addr: unix:/x.sock error: Connection refused"
    )
    err = _core.rpc_error(errdefs.CODE_UNAVAILABLE, details, "/x.sock")
    assert isinstance(err, errdefs.Unavailable)
    assert str(err) == "cannot connect to berthd at /x.sock: Connection refused"
    other = _core.rpc_error(errdefs.CODE_UNAVAILABLE, "shutting down", "/x.sock")
    assert str(other) == "shutting down"
    assert type(_core.rpc_error(errdefs.CODE_NOT_FOUND, "nope", "/x")) is errdefs.NotFound
    assert type(_core.rpc_error(13, "internal", "/x")) is errdefs.BerthError


def test_address_and_namespace_defaults_follow_the_environment(monkeypatch: Any) -> None:
    for name in (*_config.ADDRESS_ENV, _config.NAMESPACE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert _config.resolve_address(None) == "/run/berth/berth.sock"
    assert _config.resolve_namespace(None) == "default"
    monkeypatch.setenv("CONTAINERD_ADDRESS", "/c.sock")
    assert _config.resolve_address(None) == "/c.sock"
    monkeypatch.setenv("BERTH_ADDRESS", "/b.sock")
    assert _config.resolve_address(None) == "/b.sock"
    assert _config.resolve_address("/arg.sock") == "/arg.sock"
    monkeypatch.setenv("CONTAINERD_NAMESPACE", "envns")
    assert _config.resolve_namespace(None) == "envns"
    assert _config.resolve_namespace("argns") == "argns"
