"""Pure parts of the shim: flags, addresses, cgroups, runc
logs, runtime options, metrics from a cgroup tree, the reaper, the publisher,
and how ``start`` publishes its socket and cleans up after a failure."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from berth import errdefs
from berth.api.events import task_pb2 as events
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.shim import main as shim_main
from berth.shim.cgroups import Cgroup
from berth.shim.container import RuntimeOptions, _should_kill_all_on_exit
from berth.shim.events import Publisher, pack_any, topic_of
from berth.shim.main import (
    OptionsError,
    UsageError,
    parse_flags,
    shim_cgroup_option,
    socket_address,
    state_dir,
)
from berth.shim.reaper import Reaper, exit_status
from berth.shim.runc import _strip_log_lines, last_error
from berth.shim.service import parse_runtime_options
from berth.shim.stats import metrics_v1
from berth.ttrpc import CallContext, Server


def test_flags_parse_like_go() -> None:
    f = parse_flags(
        ["-namespace", "k8s.io", "-address=/run/b.sock", "--id", "c1", "-debug", "start"]
    )
    assert (f.namespace, f.address, f.id, f.debug, f.action) == (
        "k8s.io",
        "/run/b.sock",
        "c1",
        True,
        "start",
    )
    assert parse_flags(["-debug=false", "delete", "-x"]).action == "delete"
    assert parse_flags(["-v"]).version


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-bogus", "x"], "flag provided but not defined: -bogus"),
        (["-id"], "flag needs an argument: -id"),
        (["-debug=maybe"], "invalid boolean value"),
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_flags(argv)


def test_socket_address_is_a_hash_under_the_daemons_state_dir() -> None:
    a = socket_address("/run/berth/berth.sock", "default", "c1")
    assert a.startswith("unix:///run/berth/s/") and len(a.rsplit("/", 1)[1]) == 64
    assert a != socket_address("/run/berth/berth.sock", "other", "c1")
    assert a == socket_address("/run/berth/berth.sock", "default", "c1")
    long_dir = "/tmp/" + "x" * 80 + "/d.sock"
    assert socket_address(long_dir, "default", "c1").startswith("unix:///run/berth/s/")
    assert state_dir("") == "/run/berth"


def test_cgroup_paths_from_proc_on_v1_and_v2() -> None:
    text = "12:memory:/berth/c1\n5:cpu,cpuacct:/berth/c1\n1:name=systemd:/x\n0::/\n"
    v1 = Cgroup.parse(text, unified=False, root="/cg")
    assert v1.dir("memory") == "/cg/memory/berth/c1"
    assert v1.dir("cpuacct") == "/cg/cpuacct/berth/c1"
    assert v1.dir("systemd") == "/cg/systemd/x"
    v2 = Cgroup.parse("0::/pods/c2\n", unified=True, root="/cg")
    assert v2.dir("memory") == "/cg/pods/c2"


def test_runc_errors_come_from_the_last_logged_error(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text(
        json.dumps({"level": "error", "msg": "old failure"})
        + "\n"
        + json.dumps({"level": "warning", "msg": "meh"})
        + "\nnot json\n"
        + json.dumps({"level": "error", "msg": " container not running \n"})
        + "\n"
    )
    assert last_error(str(log)) == "container not running"
    assert last_error(str(tmp_path / "missing")) == ""
    mixed = '{"level":"error","msg":"boom"}\nplain words\n{"level":"info","msg":"x"}'
    assert _strip_log_lines(mixed) == "boom\nplain words"


def test_runtime_options_decode_and_reject_foreign_types() -> None:
    opts = oci_pb2.Options(binary_name="crun", root="/r", systemd_cgroup=True)
    parsed = parse_runtime_options(
        any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString())
    )
    assert (parsed.binary_name, parsed.root, parsed.systemd_cgroup) == ("crun", "/r", True)
    assert parse_runtime_options(any_pb2.Any()) == RuntimeOptions()
    with pytest.raises(errdefs.InvalidArgument, match="unsupported runtime options type"):
        parse_runtime_options(any_pb2.Any(type_url="x.Y"))
    with pytest.raises(errdefs.InvalidArgument, match="invalid runtime options"):
        parse_runtime_options(any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\xff"))


def test_start_reads_the_shim_cgroup_without_protobuf() -> None:
    def wrapped(type_url: str, opts: oci_pb2.Options) -> bytes:
        return any_pb2.Any(type_url=type_url, value=opts.SerializeToString()).SerializeToString()

    # Every field set, so the hand-written decoder has to skip all wire types.
    full = oci_pb2.Options(
        no_pivot_root=True,
        no_new_keyring=True,
        shim_cgroup="/kubepods/shim",
        io_uid=4294967295,
        io_gid=7,
        binary_name="runc",
        root="/r",
        criu_path="/c",
        systemd_cgroup=True,
        criu_image_path="/i",
        criu_work_path="/w",
    )
    for type_url in ("containerd.runc.v1.Options", "types.example/containerd.runc.v1.Options"):
        assert shim_cgroup_option(wrapped(type_url, full)) == "/kubepods/shim"
    runtime_v1 = "containerd.runtime.linux.runc.v1.Options"
    assert shim_cgroup_option(wrapped(runtime_v1, oci_pb2.Options(shim_cgroup="/a"))) == "/a"
    assert shim_cgroup_option(wrapped(runtime_v1, oci_pb2.Options(root="/r"))) == ""
    assert shim_cgroup_option(b"") == ""
    assert shim_cgroup_option(any_pb2.Any().SerializeToString()) == ""
    with pytest.raises(OptionsError, match="unsupported runtime options type"):
        shim_cgroup_option(any_pb2.Any(type_url="x.Y").SerializeToString())
    for garbage in (b"\xff", b"\x0a\x05abc", b"\x0b", b"\x00\x01"):
        with pytest.raises(OptionsError):
            shim_cgroup_option(garbage)


@pytest.mark.parametrize(
    "text",
    [
        '{"annotations": {"io.containerd.runc.v2.group": "g"}}',
        # An escaped key is the same key to a JSON reader.
        r'{"annotations": {"io.containerd.runc.v2.gro\u0075p": "g"}}',
        r'{"annotations": {"io.kubernetes.cri.sandbox\u002did": "g"}}',
    ],
)
def test_start_finds_a_group_annotation_however_the_spec_spells_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    (tmp_path / "config.json").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert shim_main._grouping("c1", {}) == "g"
    assert shim_main._grouping("c1", {"BERTH_SHIM_GROUP": "@ns"}) == "g"


def test_runtime_options_round_trip_through_options_json(tmp_path: Path) -> None:
    opts = RuntimeOptions(binary_name="runc", root="/x", no_pivot_root=True)
    opts.write(str(tmp_path))
    assert json.loads((tmp_path / "options.json").read_text())["NoPivotRoot"] is True
    assert RuntimeOptions.read(str(tmp_path)) == opts
    assert RuntimeOptions.read(str(tmp_path / "none")) is None


def test_kill_all_on_exit_only_without_own_pid_namespace(tmp_path: Path) -> None:
    def write(namespaces: list[dict[str, str]]) -> bool:
        (tmp_path / "config.json").write_text(json.dumps({"linux": {"namespaces": namespaces}}))
        return _should_kill_all_on_exit(str(tmp_path))

    assert write([{"type": "pid"}]) is False
    assert write([{"type": "pid", "path": "/proc/1/ns/pid"}]) is True
    assert write([{"type": "mount"}]) is True


def test_v1_metrics_read_from_a_cgroup_tree(tmp_path: Path) -> None:
    mem = tmp_path / "memory" / "c"
    acct = tmp_path / "cpuacct" / "c"
    pids = tmp_path / "pids" / "c"
    for d in (mem, acct, pids):
        d.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("4096\n")
    (mem / "memory.limit_in_bytes").write_text("8192\n")
    (mem / "memory.stat").write_text("cache 1\nrss 2\ntotal_rss 3\npgfault 9\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (acct / "cpuacct.usage").write_text("123456\n")
    (acct / "cpuacct.stat").write_text("user 2\nsystem 1\n")
    (acct / "cpuacct.usage_percpu").write_text("100 200 \n")
    (pids / "pids.current").write_text("3\n")
    (pids / "pids.max").write_text("max\n")
    cg = Cgroup(unified=False, dirs={"memory": str(mem), "cpuacct": str(acct), "pids": str(pids)})
    m = metrics_v1(cg)
    assert (m.memory.usage.usage, m.memory.usage.limit) == (4096, 8192)
    assert (m.memory.cache, m.memory.rss, m.memory.total_rss, m.memory.pg_fault) == (1, 2, 3, 9)
    assert m.memory_oom_control.oom_kill == 2
    assert m.cpu.usage.total == 123456 and list(m.cpu.usage.per_cpu) == [100, 200]
    assert (m.cpu.usage.user, m.cpu.usage.kernel) == (20_000_000, 10_000_000)
    assert (m.pids.current, m.pids.limit) == (3, 0)


def test_exit_status_is_code_or_128_plus_signal() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(9) == 137


def test_reaper_gives_spawned_processes_their_status_and_keeps_early_exits() -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install()
        try:
            _, fut = reaper.spawn(["sh", "-c", "exit 5"])
            assert fut is not None
            assert await asyncio.wait_for(reaper.wait(fut), 10) == 5
            # An unregistered child's exit waits to be claimed.
            pid = os.posix_spawnp("true", ["true"], dict(os.environ))
            for _ in range(500):
                early = reaper.claim(pid, since=0)
                if early is not None:
                    break
                await asyncio.sleep(0.01)
            assert early is not None and early.status == 0
            assert reaper.claim(pid, since=0) is None
        finally:
            reaper.close()

    asyncio.run(main())


def test_publisher_delivers_in_order_after_the_daemon_appears() -> None:
    async def main() -> None:
        d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
        path = os.path.join(d, "e.sock")
        got: list[events_pb2.Envelope] = []

        async def forward(ctx: CallContext, req: events_pb2.ForwardRequest) -> empty_pb2.Empty:
            got.append(req.envelope)
            return empty_pb2.Empty()

        pub = Publisher(path, "ns1")
        for i in range(5):
            pub.publish(events.TaskExit(container_id=f"c{i}", exit_status=i))
        await asyncio.sleep(0.2)  # daemon not there yet: nothing lost
        assert pub.pending == 5
        server = Server()
        server.register_service(
            events_pb2.DESCRIPTOR.services_by_name["Events"], {"Forward": forward}
        )
        await server.start(path)
        try:
            assert await pub.flush(10)
            assert [events.TaskExit.FromString(e.event.value).exit_status for e in got] == [
                0,
                1,
                2,
                3,
                4,
            ]
            assert {e.topic for e in got} == {"/tasks/exit"}
            assert {e.namespace for e in got} == {"ns1"}
            await pub.close(1)
        finally:
            await server.close()
            os.rmdir(d)

    asyncio.run(main())


def test_events_use_containerd_type_urls_and_topics() -> None:
    assert pack_any(events.TaskOOM()).type_url == "containerd.events.TaskOOM"
    assert topic_of(events.TaskExecStarted()) == "/tasks/exec-started"
    with pytest.raises(ValueError):
        topic_of(empty_pb2.Empty())


def test_a_failed_start_kills_only_the_processes_holding_its_unpublished_socket() -> None:
    # What start does when the zygote failed without telling it a pid: every
    # holder of its listening socket but itself and the zygote is a server
    # launched on it. A process without the socket is never touched.
    d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    sock, private = shim_main._listen_private(os.path.join(d, "group"))
    procs = []
    try:
        os.unlink(private)
        server = subprocess.Popen(sleeper, pass_fds=[sock.fileno()])
        zygote = subprocess.Popen(sleeper, pass_fds=[sock.fileno()])
        bystander = subprocess.Popen(sleeper)
        procs = [server, zygote, bystander]
        shim_main._kill_unpublished_servers(sock, spare=zygote.pid)
        assert server.wait(10) == -signal.SIGKILL
        assert zygote.poll() is None and bystander.poll() is None
        # Told one pid, it kills that one only if it holds the socket.
        shim_main._kill_unpublished_servers(sock, only=bystander.pid)
        assert bystander.poll() is None
        shim_main._kill_unpublished_servers(sock, only=zygote.pid)
        assert zygote.wait(10) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        sock.close()
        os.rmdir(d)


def test_publish_leaves_a_live_groups_socket_alone() -> None:
    # A start that launched its server but lost the group's path to another
    # start's server joins that one (and kills its own, unreached).
    d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
    path = os.path.join(d, "s", "group")
    winner = shim_main._listen(path)
    assert winner is not None
    sock, private = shim_main._listen_private(path)
    try:
        assert shim_main._publish(private, path) is False
        assert shim_main._probe(path) == "live"
        winner.close()  # now dead: the next publish replaces it
        assert shim_main._publish(private, path) is True
        assert os.path.samefile(private, path)
    finally:
        winner.close()
        sock.close()
        shutil.rmtree(d)


def test_the_zygote_to_spare_is_found_by_its_sockets_peer_credentials() -> None:
    d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
    path = os.path.join(d, "zygote")
    try:
        assert shim_main._listener_pid(path) is None
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(path)
            listener.listen(1)
            assert shim_main._listener_pid(path) == os.getpid()
    finally:
        shutil.rmtree(d)
