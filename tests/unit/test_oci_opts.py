"""Spec options: what each one changes, and the errors bad input gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth import errdefs, oci
from berth.oci import caps

DEFAULT_PATH = oci.DEFAULT_ENV[0]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/app:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\napp:x:2345:\nstaff:x:50:root,app\n")
    return r


def gen(*opts: oci.SpecOpt, **kw: Any) -> oci.Spec:
    return oci.generate("c1", "ns1", *opts, **kw)


# --------------------------------------------------------------------------
# Env, args, tty
# --------------------------------------------------------------------------


def test_replace_or_append_env() -> None:
    merged = oci.replace_or_append_env(["A=1", "B=2", "C=3"], ["B=20", "D=4", "C", "E"])
    assert merged == ["A=1", "B=20", "D=4"]


def test_with_env_sets_and_unsets() -> None:
    env = gen(oci.with_env(["FOO=bar", "PATH=/x"]), oci.with_env(["FOO"]))["process"]["env"]
    assert env == ["PATH=/x"]


@pytest.mark.parametrize("bad", [["=x"], ["A=\x00"], "A=1"])
def test_with_env_rejects_bad_entries(bad: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_env(bad)


def test_with_process_args_and_cwd() -> None:
    proc = gen(oci.with_process_args("sh", "-c", "true"), oci.with_process_cwd("/tmp"))["process"]
    assert proc["args"] == ["sh", "-c", "true"]
    assert proc["cwd"] == "/tmp"
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_process_args()
    with pytest.raises(errdefs.InvalidArgument, match="absolute"):
        oci.with_process_cwd("tmp")


def test_with_tty_sets_terminal_and_term_once() -> None:
    proc = gen(oci.with_tty, oci.with_tty)["process"]
    assert proc["terminal"] is True
    assert proc["env"] == [DEFAULT_PATH, "TERM=xterm"]


# --------------------------------------------------------------------------
# Image config
# --------------------------------------------------------------------------


def image(**config: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": config}


def test_image_config_sets_args_env_cwd_user_and_stop_signal(root: Path) -> None:
    labels: dict[str, str] = {}
    spec = gen(
        oci.with_env(["FROM_USER=1", "LANG=C"]),
        oci.with_image_config(
            image(
                Env=["PATH=/app/bin:/bin", "LANG=en_US"],
                Entrypoint=["/app/run"],
                Cmd=["--serve"],
                WorkingDir="/app",
                User="app",
                StopSignal="SIGQUIT",
            )
        ),
        rootfs=root,
        labels=labels,
    )
    proc = spec["process"]
    assert proc["args"] == ["/app/run", "--serve"]
    # The image's PATH replaces the placeholder default; env set on purpose wins.
    assert proc["env"] == ["PATH=/app/bin:/bin", "LANG=C", "FROM_USER=1"]
    assert proc["cwd"] == "/app"
    assert proc["user"] == {"uid": 1234, "gid": 2345, "additionalGids": [2345, 50]}
    assert labels == {oci.STOP_SIGNAL_LABEL: "SIGQUIT"}


def test_image_config_defaults(root: Path) -> None:
    labels: dict[str, str] = {}
    spec = gen(oci.with_image_config(image(Cmd=["sh"])), rootfs=root, labels=labels)
    proc = spec["process"]
    assert proc["args"] == ["sh"]
    assert proc["env"] == [DEFAULT_PATH]
    assert proc["cwd"] == "/"
    assert proc["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 50]}
    assert labels[oci.STOP_SIGNAL_LABEL] == "SIGTERM"


def test_image_config_args_replace_cmd_but_keep_entrypoint(root: Path) -> None:
    opt = oci.with_image_config(image(Entrypoint=["/e"], Cmd=["c"]), args=["x", "y"])
    assert gen(opt, rootfs=root)["process"]["args"] == ["/e", "x", "y"]


def test_image_config_without_config_section(root: Path) -> None:
    spec = gen(oci.with_image_config({"os": "linux"}), rootfs=root)
    assert spec["process"]["args"] == []


def test_image_config_needs_the_rootfs_for_groups() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="rootfs absolute path is required"):
        gen(oci.with_image_config(image(Cmd=["sh"])))


def test_image_config_unknown_user_is_not_found(root: Path) -> None:
    with pytest.raises(errdefs.NotFound):
        gen(oci.with_image_config(image(User="ghost")), rootfs=root)


@pytest.mark.parametrize(
    "bad",
    [
        image(Env="PATH=/bin"),
        image(Cmd=[1]),
        image(WorkingDir=3),
        {"config": []},
        [],
    ],
)
def test_image_config_with_wrong_types_is_invalid(bad: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_image_config(bad)


# --------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------


def test_with_mounts_appends_after_defaults() -> None:
    spec = gen(
        oci.with_mounts(
            [
                oci.Mount("/data", "bind", "/srv/data", ("rbind", "ro")),
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"},
            ]
        )
    )
    assert spec["mounts"][-2:] == [
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"},
    ]
    assert len(spec["mounts"]) == 9


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (oci.Mount("data", "tmpfs", "tmpfs"), "must be an absolute path"),
        (oci.Mount("/a/../../etc", "tmpfs", "tmpfs"), "must not contain '..'"),
        (oci.Mount("/..", "tmpfs", "tmpfs"), "must not contain '..'"),
        (oci.Mount("/", "tmpfs", "tmpfs"), "container root"),
        (oci.Mount("//", "tmpfs", "tmpfs"), "container root"),
        (oci.Mount("/./", "tmpfs", "tmpfs"), "container root"),
        (oci.Mount("", "tmpfs", "tmpfs"), "must not be empty"),
        (oci.Mount("/x", "bind", "relative/dir", ("rbind",)), "absolute host path"),
        (oci.Mount("/x", "", "srv", ("bind",)), "absolute host path"),
        (oci.Mount("/x", "bind", "/srv/../../etc", ("rbind",)), "must not contain '..'"),
        (oci.Mount("/x\x00y", "tmpfs", "tmpfs"), "NUL"),
        (oci.Mount("/x", "tmpfs", "tmpfs", ("size=1\x00",)), "NUL"),
    ],
)
def test_hostile_mounts_are_invalid_argument(mount: oci.Mount, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message) as info:
        oci.with_mounts([oci.Mount("/ok", "tmpfs", "tmpfs"), mount])
    assert info.value.code == errdefs.CODE_INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data",
    [
        {"destination": "/x", "options": "ro"},
        {"destination": 5},
        {"destination": "/x", "bogus": 1},
    ],
)
def test_malformed_mount_json_is_invalid(data: dict[str, Any]) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_mounts([data])


def test_dots_inside_names_are_fine() -> None:
    spec = gen(oci.with_mounts([oci.Mount("/a..b/.c", "bind", "/srv/..x", ("rbind",))]))
    assert spec["mounts"][-1]["destination"] == "/a..b/.c"


# --------------------------------------------------------------------------
# Root, hostname, namespaces, network, cgroups
# --------------------------------------------------------------------------


def test_readonly_rootfs_and_hostname() -> None:
    spec = gen(oci.with_readonly_rootfs, oci.with_hostname("web-1.local"))
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "web-1.local"


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "-lead", "a/b"])
def test_bad_hostname_is_invalid(name: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_hostname(name)


def test_host_network_drops_netns_and_binds_host_files() -> None:
    spec = gen(oci.with_host_network)
    assert {"type": "network"} not in spec["linux"]["namespaces"]
    assert len(spec["linux"]["namespaces"]) == 4
    assert spec["mounts"][-2:] == [
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": "/etc/hosts",
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": "/etc/resolv.conf",
            "options": ["rbind", "ro"],
        },
    ]


def test_linux_namespace_join_replaces_the_new_one() -> None:
    spec = gen(oci.with_linux_namespace("network", "/var/run/netns/x"))
    assert {"type": "network", "path": "/var/run/netns/x"} in spec["linux"]["namespaces"]
    assert len(spec["linux"]["namespaces"]) == 5
    with pytest.raises(errdefs.InvalidArgument, match="unknown namespace type"):
        oci.with_linux_namespace("time")
    with pytest.raises(errdefs.InvalidArgument, match="absolute"):
        oci.with_linux_namespace("ipc", "proc/1/ns/ipc")


def test_cgroup_options() -> None:
    assert gen(oci.with_cgroup("/custom/x"))["linux"]["cgroupsPath"] == "/custom/x"
    assert (
        gen(oci.with_cgroup_parent("/kubepods/pod1"))["linux"]["cgroupsPath"] == "/kubepods/pod1/c1"
    )
    systemd = gen(oci.with_cgroup_parent("/kubepods.slice/kubepods-pod1.slice"))
    assert systemd["linux"]["cgroupsPath"] == "kubepods-pod1.slice:berth:c1"
    for bad in ("/a/../../b", "", "x.slice:..:y"):
        with pytest.raises(errdefs.InvalidArgument):
            oci.with_cgroup_parent(bad)
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_cgroup("/../escape")


# --------------------------------------------------------------------------
# Resources, rlimits, oom
# --------------------------------------------------------------------------


def test_resources() -> None:
    res = gen(
        oci.with_memory_limit(64 << 20),
        oci.with_cpu(shares=512, cpus="0-1,3"),
        oci.with_cpu_limit(1.5),
        oci.with_pids_limit(100),
    )["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20}
    assert res["cpu"] == {"shares": 512, "cpus": "0-1,3", "quota": 150000, "period": 100000}
    assert res["pids"] == {"limit": 100}
    assert res["devices"][0] == {"allow": False, "access": "rwm"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: oci.with_memory_limit(0),
        lambda: oci.with_memory_limit(-5),
        lambda: oci.with_memory_limit(True),
        lambda: oci.with_cpu(shares=0),
        lambda: oci.with_cpu(quota=-2),
        lambda: oci.with_cpu(period=0),
        lambda: oci.with_cpu(cpus="0-"),
        lambda: oci.with_cpu(mems="a"),
        lambda: oci.with_cpu_limit(0),
        lambda: oci.with_cpu_limit(0.001),
        lambda: oci.with_pids_limit(0),
        lambda: oci.with_pids_limit(-3),
    ],
)
def test_bad_resources_are_invalid(make: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        make()


def test_rlimits_replace_by_type_and_append() -> None:
    spec = gen(
        oci.with_rlimits({"RLIMIT_NOFILE": (512, 512)}),
        oci.with_rlimits([oci.Rlimit("RLIMIT_CORE", 0, 0)]),
    )
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]


@pytest.mark.parametrize(
    "limits",
    [
        {"RLIMIT_BOGUS": (1, 1)},
        {"NOFILE": (1, 1)},
        {"RLIMIT_NOFILE": (10, 5)},
        {"RLIMIT_NOFILE": (-1, 5)},
        {"RLIMIT_NOFILE": (1, 2**64)},
    ],
)
def test_bad_rlimits_are_invalid(limits: dict[str, tuple[int, int]]) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_rlimits(limits)


def test_oom_score_adj_is_clamped_to_the_callers_own() -> None:
    assert gen(oci.with_oom_score_adj(-500, current=100))["process"]["oomScoreAdj"] == 100
    assert gen(oci.with_oom_score_adj(300, current=100))["process"]["oomScoreAdj"] == 300
    unrestricted = oci.with_oom_score_adj(-500, restrict=False, current=100)
    assert gen(unrestricted)["process"]["oomScoreAdj"] == -500
    own = int(Path("/proc/self/oom_score_adj").read_text())
    assert gen(oci.with_oom_score_adj(-1000))["process"]["oomScoreAdj"] == own


@pytest.mark.parametrize("score", [-1001, 1001])
def test_oom_score_adj_out_of_range_is_invalid(score: int) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="out of range"):
        oci.with_oom_score_adj(score)


# --------------------------------------------------------------------------
# Hooks, annotations
# --------------------------------------------------------------------------


def test_hooks_append_by_kind() -> None:
    spec = gen(
        oci.with_hooks({"prestart": [oci.Hook("/bin/a", ("a", "1"), timeout=5)]}),
        oci.with_hooks({"prestart": [{"path": "/bin/b"}], "poststop": [{"path": "/bin/c"}]}),
    )
    assert spec["hooks"] == {
        "prestart": [{"path": "/bin/a", "args": ["a", "1"], "timeout": 5}, {"path": "/bin/b"}],
        "poststop": [{"path": "/bin/c"}],
    }


@pytest.mark.parametrize(
    "hooks",
    [
        {"preStart": [{"path": "/bin/a"}]},
        {"prestart": [{"path": "bin/a"}]},
        {"prestart": [{"path": "/bin/a", "timeout": 0}]},
        {"prestart": [{"path": "/bin/a", "args": [1]}]},
    ],
)
def test_bad_hooks_are_invalid(hooks: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.with_hooks(hooks)


def test_annotations() -> None:
    spec = gen(oci.with_annotations({"a": "1"}), oci.with_annotations({"b": "2", "a": "3"}))
    assert spec["annotations"] == {"a": "3", "b": "2"}


# --------------------------------------------------------------------------
# Capabilities and privileges
# --------------------------------------------------------------------------


def _caps(spec: oci.Spec) -> list[str]:
    capset = spec["process"]["capabilities"]
    assert capset["bounding"] == capset["effective"] == capset["permitted"]
    return list(capset["bounding"])


def test_capabilities_add_and_drop_accept_short_names() -> None:
    got = _caps(gen(oci.with_capabilities(add=["net_admin", "CAP_SYS_TIME"], drop=["KILL"])))
    assert "CAP_NET_ADMIN" in got and "CAP_SYS_TIME" in got
    assert "CAP_KILL" not in got
    assert len(got) == 15


def test_capabilities_all_rules() -> None:
    assert _caps(gen(oci.with_capabilities(add=["ALL"], drop=["CHOWN"]))) == [
        c for c in caps.KNOWN_CAPABILITIES if c != "CAP_CHOWN"
    ]
    assert _caps(gen(oci.with_capabilities(drop=["ALL"], add=["CHOWN"]))) == ["CAP_CHOWN"]


def test_unknown_capability_is_invalid() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="unknown capability 'CAP_FLY'"):
        oci.with_capabilities(add=["CAP_FLY"])


def test_privileged(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = gen(oci.with_privileged())
    linux = spec["linux"]
    assert _caps(spec) == caps.current()
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert "seccomp" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sysfs = next(m for m in spec["mounts"] if m["type"] == "sysfs")
    assert "rw" in sysfs["options"] and "ro" not in sysfs["options"]
    paths = {d["path"] for d in linux["devices"]}
    assert "/dev/null" in paths
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)
    null = next(d for d in linux["devices"] if d["path"] == "/dev/null")
    assert (null["type"], null["major"], null["minor"]) == ("c", 1, 3)


def test_privileged_caps_are_the_callers_effective_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    # This host's mask: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE.
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")
    current = caps.current(str(status))
    assert "CAP_SYS_RESOURCE" not in current
    assert len(current) == len(caps.KNOWN_CAPABILITIES) - 1


def test_privileged_without_host_devices() -> None:
    assert "devices" not in gen(oci.with_privileged(host_devices=False))["linux"]


def test_new_privileges() -> None:
    assert "noNewPrivileges" not in gen(oci.with_new_privileges)["process"]


def test_options_compose() -> None:
    both = oci.compose(oci.with_hostname("h"), oci.with_readonly_rootfs)
    spec = gen(both)
    assert spec["hostname"] == "h" and spec["root"]["readonly"] is True
