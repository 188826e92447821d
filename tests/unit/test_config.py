"""config.toml parsing, validation messages, and rendering."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth import config, plugin
from berth.config import ConfigError, doc


@dataclass
class _DemoConfig:
    size: int = doc("a size", 3)
    mode: str = doc("a mode", "fast")


def _reg() -> plugin.Registration:
    return plugin.Registration(
        type="io.test.v1", id="demo", init=lambda ic: None, config=_DemoConfig
    )


def _load(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return config.load(p, [_reg()])


def test_defaults_match_containerd_layout() -> None:
    cfg = config.load(None, [])
    assert (cfg.root, cfg.state, cfg.grpc.address) == (
        "/var/lib/berth",
        "/run/berth",
        "/run/berth/berth.sock",
    )
    assert cfg.ttrpc_address == "/run/berth/berth.sock.ttrpc"


def test_plugin_section_is_decoded(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'version = 2\n[plugins."io.test.v1.demo"]\nsize = 9\n')
    assert cfg.plugins["io.test.v1.demo"] == _DemoConfig(size=9, mode="fast")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version = 2\nbogus = 1\n", "unknown key 'bogus'"),
        ('version = 2\n[grpc]\ngid = "wheel"\n', "grpc.gid: expected an integer"),
        ("version = 2\n[grpc]\ngid = true\n", "grpc.gid: expected an integer"),
        ("version = 1\n", "version: 1 is not supported"),
        (
            'version = 2\n[plugins."io.test.v1.demo"]\nsize = "x"\n',
            'plugins."io.test.v1.demo".size',
        ),
        ('version = 2\n[plugins."io.test.v1.demo"]\nspeed = 1\n', "unknown key"),
        ('version = 2\n[plugins."io.nope.v1.x"]\n', "unknown plugin"),
        ('version = 2\ndisabled_plugins = ["io.nope.v1.x"]\n', "unknown plugin"),
        ('version = 2\n[debug]\nlevel = "loud"\n', "debug.level"),
        ('version = 2\n[proxy_plugins.p]\ntype = "disk"\naddress = "/s"\n', "proxy_plugins.p.type"),
        ('version = 2\ndisabled_plugins = "x"\n', "disabled_plugins: expected list"),
        ("version = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_reason(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, text)
    msg = str(ei.value)
    assert str(tmp_path / "config.toml") in msg
    assert needle in msg


def test_rendered_default_is_valid_toml_and_round_trips(tmp_path: Path) -> None:
    text = config.render(config.load(None, [_reg()]))
    assert "# a size" in text
    data = tomllib.loads(text)
    assert data["plugins"]["io.test.v1.demo"]["size"] == 3
    p = tmp_path / "c.toml"
    p.write_text(text)
    again = config.load(p, [_reg()])
    assert config.render(again) == text


def test_dump_without_comments(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'version = 2\nroot = "/x"\n')
    text = config.render(cfg, comments=False)
    assert "#" not in text and 'root = "/x"' in text
