"""Generated specs run under the real runc and confine the process as containerd's do.

Each test writes a bundle whose ``root.path`` is one shared, extracted busybox
rootfs (extraction is the slow part) and runs ``runc run`` with a private
``--root``. Containers live in cgroups under a per-run namespace name, removed
when the module ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth import oci
from berth.core import cgroups
from tests.support.imagebuilder import build_busybox_image

pytestmark = pytest.mark.integration

RUNC = shutil.which("runc")
NAMESPACE = f"berth-oci-{os.getpid()}"
CGROUP_ROOT = Path("/sys/fs/cgroup")
TIMEOUT = 30


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    if RUNC is None:
        pytest.skip("runc is not installed (Debian package 'runc')")
    # Short path: runc keeps sockets under its --root.
    path = Path(tempfile.mkdtemp(prefix="b.oci.", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _remove_namespace_cgroups()


def _remove_namespace_cgroups() -> None:
    """Remove the per-run cgroup directories runc left behind (parents of containers)."""
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / NAMESPACE
        if not top.is_dir() or top.is_symlink():
            continue
        # Deepest first: runc removes only a container's own cgroup, so the
        # parents (the namespace's, and any cgroup parent a test chose) are
        # left, and a container cgroup only survives a test that failed.
        for dirpath, _, _ in os.walk(top, topdown=False):
            os.rmdir(dirpath)


@pytest.fixture(scope="module")
def rootfs(workdir: Path) -> Path:
    image = build_busybox_image()
    path = workdir / "rootfs"
    path.mkdir()
    subprocess.run(
        ["tar", "-x", "-C", str(path)], input=image.layers[0].tar, check=True, timeout=TIMEOUT
    )
    return path


@pytest.fixture(scope="module")
def image_config() -> dict[str, object]:
    config: dict[str, object] = json.loads(build_busybox_image().config)
    return config


class Runner:
    def __init__(self, workdir: Path, rootfs: Path) -> None:
        self.workdir = workdir
        self.rootfs = rootfs
        self.state = workdir / "state"
        self.count = 0

    def spec(self, *opts: oci.SpecOpt) -> tuple[str, oci.Spec]:
        self.count += 1
        cid = f"c{self.count}"
        spec = oci.generate(
            cid, NAMESPACE, oci.with_rootfs_path(str(self.rootfs)), *opts, rootfs=self.rootfs
        )
        return cid, spec

    def _bundle(self, cid: str, spec: oci.Spec) -> Path:
        bundle = self.workdir / f"bundle-{cid}"
        bundle.mkdir()
        (bundle / "config.json").write_bytes(oci.dumps(spec))
        return bundle

    def _runc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        assert RUNC is not None
        return subprocess.run(
            [RUNC, "--root", str(self.state), *args],
            text=True,
            timeout=TIMEOUT,
            **kw,
        )

    def pid(self, cid: str) -> int:
        """The host PID of running container ``cid``'s init."""
        done = self._runc("state", cid, capture_output=True)
        assert done.returncode == 0, f"runc state failed: {done.stderr}"
        pid = json.loads(done.stdout)["pid"]
        assert isinstance(pid, int) and pid > 0
        return pid

    def delete(self, cid: str) -> None:
        self._runc("delete", "--force", cid, capture_output=True)
        shutil.rmtree(self.workdir / f"bundle-{cid}", ignore_errors=True)

    def run(self, *opts: oci.SpecOpt, script: str) -> str:
        """Run ``sh -c script`` to completion; its stdout, failing on non-zero exit."""
        cid, spec = self.spec(oci.with_process_args("sh", "-c", script), *opts)
        return self.run_spec(cid, spec)

    def run_spec(self, cid: str, spec: oci.Spec) -> str:
        bundle = self._bundle(cid, spec)
        try:
            done = self._runc("run", "--bundle", str(bundle), cid, capture_output=True)
        finally:
            self.delete(cid)
        assert done.returncode == 0, f"runc run failed ({done.returncode}): {done.stderr}"
        return done.stdout

    def start_detached(self, cid: str, spec: oci.Spec) -> None:
        bundle = self._bundle(cid, spec)
        # The container inherits runc's stdio: a pipe would stay open for
        # the container's lifetime, so errors go to a file.
        log = bundle / "runc.err"
        try:
            with log.open("w") as err:
                done = self._runc(
                    "run",
                    "--detach",
                    "--bundle",
                    str(bundle),
                    cid,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            assert done.returncode == 0, f"runc run -d failed: {log.read_text()}"
        except BaseException:
            self.delete(cid)
            raise


@pytest.fixture(scope="module")
def runner(workdir: Path, rootfs: Path) -> Runner:
    return Runner(workdir, rootfs)


def _status(output: str) -> dict[str, str]:
    fields = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def test_default_spec_runs_as_root_with_containerds_confinement(runner: Runner) -> None:
    out = runner.run(script="id; cat /proc/self/status")
    first, _, rest = out.partition("\n")
    assert first.startswith("uid=0(root) gid=0(root)")
    status = _status(rest)
    # The fourteen default capabilities, and nothing else anywhere.
    assert status["CapEff"] == "00000000a80425fb"
    assert status["CapPrm"] == "00000000a80425fb"
    assert status["CapBnd"] == "00000000a80425fb"
    assert status["CapInh"] == "0000000000000000"
    assert status["Seccomp"] == "2"
    assert status["NoNewPrivs"] == "1"


def test_masked_and_readonly_paths_are_enforced(runner: Runner) -> None:
    present = [p for p in oci.DEFAULT_MASKED_PATHS if os.path.exists(p)]
    assert present, "the host has none of the masked paths; nothing to check"
    checks = []
    for path in present:
        if os.path.isdir(path):
            checks.append(f'echo "{path} dir [$(ls -A {path})]"')
        else:
            checks.append(f'echo "{path} file $(stat -c %t:%T {path})"')
    script = "; ".join(checks) + "; cat /proc/mounts; touch /sys/x 2>&1 || echo sys-write-refused"
    out = runner.run(script=script)
    lines = out.splitlines()
    for path in present:
        line = next(line for line in lines if line.startswith(path + " "))
        if os.path.isdir(path):
            assert line == f"{path} dir []", line  # covered by an empty tmpfs
        else:
            assert line == f"{path} file 1:3", line  # covered by /dev/null
    mounts = {
        fields[1]: fields[3].split(",")
        for fields in (line.split() for line in lines)
        if len(fields) >= 4 and fields[1].startswith("/")
    }
    assert "ro" in mounts["/sys"]
    assert "ro" in mounts["/proc/sys"]
    assert "sys-write-refused" in out
    assert "Read-only file system" in out


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("nobody", "uid=65534(nobody) gid=65534(nogroup)"),
        ("1000", "uid=1000(berth) gid=1000(berth)"),
        ("berth:nogroup", "uid=1000(berth) gid=65534(nogroup)"),
    ],
)
def test_user_resolves_from_the_images_passwd(runner: Runner, user: str, expected: str) -> None:
    out = runner.run(oci.with_user(user), script="id")
    assert out.startswith(expected), out


def test_image_config_runs_with_the_images_env_and_cwd(
    runner: Runner, image_config: dict[str, object]
) -> None:
    labels: dict[str, str] = {}
    cid = "img1"
    spec = oci.generate(
        cid,
        NAMESPACE,
        oci.with_rootfs_path(str(runner.rootfs)),
        oci.with_image_config(image_config, args=["sh", "-c", "echo $PATH; pwd; id -G"]),
        rootfs=runner.rootfs,
        labels=labels,
    )
    out = runner.run_spec(cid, spec).splitlines()
    assert out == [oci.DEFAULT_ENV[0].removeprefix("PATH="), "/", "0"]
    assert labels == {oci.STOP_SIGNAL_LABEL: "SIGTERM"}


def test_memory_limit_lands_in_the_container_cgroup(runner: Runner) -> None:
    limit = 64 << 20
    cid, spec = runner.spec(oci.with_memory_limit(limit), oci.with_process_args("sleep", "30"))
    runner.start_detached(cid, spec)
    try:
        if cgroups.is_v2():
            path = CGROUP_ROOT / NAMESPACE / cid / "memory.max"
        else:
            path = CGROUP_ROOT / "memory" / NAMESPACE / cid / "memory.limit_in_bytes"
        assert int(path.read_text()) == limit
    finally:
        runner.delete(cid)
    assert not path.parent.exists(), "runc delete left the container cgroup behind"


def test_oom_score_adj_below_ours_is_clamped_so_runc_starts(runner: Runner) -> None:
    # Without CAP_SYS_RESOURCE, runc cannot lower the score below its own;
    # the clamp keeps the container startable.
    own = int(Path("/proc/self/oom_score_adj").read_text())
    out = runner.run(oci.with_oom_score_adj(-999), script="cat /proc/self/oom_score_adj")
    assert int(out) == max(-999, own)


def test_rlimits_readonly_rootfs_hostname_and_dropped_caps(runner: Runner) -> None:
    out = runner.run(
        oci.with_rlimits({"RLIMIT_NOFILE": (256, 512)}),
        oci.with_readonly_rootfs,
        oci.with_hostname("oci-test"),
        oci.with_capabilities(drop=["NET_RAW", "MKNOD"]),
        script=(
            "ulimit -n; ulimit -Hn; hostname; touch /x 2>/dev/null || echo ro-root;"
            " grep CapEff /proc/self/status"
        ),
    )
    lines = out.splitlines()
    assert lines[:4] == ["256", "512", "oci-test", "ro-root"]
    dropped = 0xA80425FB & ~(1 << 13) & ~(1 << 27)  # CAP_NET_RAW, CAP_MKNOD
    assert _status(lines[4])["CapEff"] == f"{dropped:016x}"


def test_tty_less_env_and_mounts_reach_the_process(runner: Runner, workdir: Path) -> None:
    data = workdir / "shared"
    data.mkdir()
    (data / "hello.txt").write_text("from the host\n")
    out = runner.run(
        oci.with_env(["GREETING=hi"]),
        oci.with_mounts([oci.Mount("/data", "bind", str(data), ("rbind", "ro"))]),
        script="echo $GREETING; cat /data/hello.txt; touch /data/x 2>/dev/null || echo ro-bind",
    )
    assert out.splitlines() == ["hi", "from the host", "ro-bind"]


def _cgroup_file(controller: str, path: str, name: str) -> Path:
    """Where the host keeps ``name`` of cgroup ``path`` (v1: under the controller's hierarchy)."""
    if cgroups.is_v2():
        return CGROUP_ROOT / path.lstrip("/") / name
    return CGROUP_ROOT / controller / path.lstrip("/") / name


def test_prestart_and_poststop_hooks_run_on_the_host_with_the_state(
    runner: Runner, workdir: Path
) -> None:
    out = workdir / "hooks"
    out.mkdir()
    # A hook runs in runc's namespaces and gets the container's state on stdin.
    script = f'cat > {out}/"$KIND".json'
    hooks = {
        kind: [oci.Hook("/bin/sh", ("sh", "-c", script), (f"KIND={kind}",), timeout=10)]
        for kind in ("prestart", "poststop")
    }
    cid, spec = runner.spec(
        oci.with_hooks(hooks),
        # The process sees whether the prestart hook ran before it started.
        oci.with_mounts([oci.Mount("/hooks", "bind", str(out), ("rbind", "ro"))]),
        oci.with_process_args("sh", "-c", "ls /hooks"),
    )
    assert runner.run_spec(cid, spec).split() == ["prestart.json"]
    prestart = json.loads((out / "prestart.json").read_text())
    # runc 1.1 reports the state as still "creating" to prestart hooks.
    assert prestart["id"] == cid and prestart["status"] in ("creating", "created")
    assert prestart["pid"] > 0
    poststop = json.loads((out / "poststop.json").read_text())
    assert (poststop["id"], poststop["status"]) == (cid, "stopped")


def test_cgroup_parent_places_the_container_under_it(runner: Runner) -> None:
    parent = f"/{NAMESPACE}/parent-x"
    cid, spec = runner.spec(oci.with_cgroup_parent(parent), oci.with_process_args("sleep", "30"))
    assert spec["linux"]["cgroupsPath"] == f"{parent}/{cid}"
    runner.start_detached(cid, spec)
    try:
        lines = Path(f"/proc/{runner.pid(cid)}/cgroup").read_text().splitlines()
    finally:
        runner.delete(cid)
    # "ID:CONTROLLERS:PATH" per hierarchy; v2's single line is "0::PATH".
    placed = {
        controller: path
        for _, controllers, path in (line.split(":", 2) for line in lines)
        for controller in controllers.split(",")
    }
    wanted = [""] if cgroups.is_v2() else ["memory", "pids", "cpu", "freezer", "devices"]
    assert {c: placed.get(c) for c in wanted} == dict.fromkeys(wanted, f"{parent}/{cid}"), lines


def test_pids_limit_caps_the_container_cgroup(runner: Runner) -> None:
    cid, spec = runner.spec(oci.with_pids_limit(16), oci.with_process_args("sleep", "30"))
    runner.start_detached(cid, spec)
    try:
        path = _cgroup_file("pids", f"/{NAMESPACE}/{cid}", "pids.max")
        assert path.read_text().strip() == "16"
    finally:
        runner.delete(cid)
    # And the kernel holds the container to it: with room for four tasks, a
    # shell (under the script's own) cannot start six background children.
    out = runner.run(
        oci.with_pids_limit(4),
        script="sh -c 'for i in 1 2 3 4 5 6; do sleep 30 & done' 2>&1; echo exit=$?",
    )
    assert "can't fork" in out and out.splitlines()[-1] != "exit=0", out


def test_cpu_limit_and_shares_land_in_the_container_cgroup(runner: Runner) -> None:
    cid, spec = runner.spec(
        oci.with_cpu_limit(0.5), oci.with_cpu(shares=512), oci.with_process_args("sleep", "30")
    )
    runner.start_detached(cid, spec)
    try:
        cg = f"/{NAMESPACE}/{cid}"
        if cgroups.is_v2():
            assert _cgroup_file("cpu", cg, "cpu.max").read_text().split() == ["50000", "100000"]
        else:
            assert _cgroup_file("cpu", cg, "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert _cgroup_file("cpu", cg, "cpu.cfs_period_us").read_text().strip() == "100000"
            assert _cgroup_file("cpu", cg, "cpu.shares").read_text().strip() == "512"
    finally:
        runner.delete(cid)
