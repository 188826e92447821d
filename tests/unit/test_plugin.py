"""Plugin ordering, init outcomes, skipping and required plugins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from berth import errdefs, plugin


def _reg(t: str, i: str, requires: tuple[str, ...] = (), init=None) -> plugin.Registration:  # type: ignore[no-untyped-def]
    return plugin.Registration(
        type=t, id=i, init=init or (lambda ic: f"{t}.{i}"), requires=requires
    )


def test_requirements_come_first_and_star_goes_last() -> None:
    regs = [
        _reg("svc", "a", requires=("meta",)),
        _reg("intro", "x", requires=(plugin.ALL,)),
        _reg("meta", "m", requires=("content",)),
        _reg("content", "c"),
    ]
    order = [r.uri for r in plugin.ordered(regs)]
    assert order == ["content.c", "meta.m", "svc.a", "intro.x"]


def test_circular_requirements_are_reported() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="circular"):
        plugin.ordered([_reg("a", "1", ("b",)), _reg("b", "1", ("a",))])


def _load(regs: list[plugin.Registration], tmp_path: Path, **kw: object) -> plugin.PluginSet:
    return asyncio.run(
        plugin.load(
            regs,
            root=tmp_path / "root",
            state=tmp_path / "state",
            address="/s",
            ttrpc_address="/s.ttrpc",
            configs={},
            **kw,  # type: ignore[arg-type]
        )
    )


def test_failed_and_skipped_plugins_are_recorded_not_fatal(tmp_path: Path) -> None:
    def boom(ic: plugin.InitContext) -> None:
        raise RuntimeError("no disk")

    def skip(ic: plugin.InitContext) -> None:
        raise plugin.SkipPlugin("not on this host")

    async def ok(ic: plugin.InitContext) -> str:
        return str(ic.root)

    ps = _load(
        [_reg("a", "boom", init=boom), _reg("a", "skip", init=skip), _reg("b", "ok", init=ok)],
        tmp_path,
    )
    status = {p.registration.uri: p for p in ps.ordered}
    assert str(status["a.boom"].error) == "no disk"
    assert "skip plugin" in str(status["a.skip"].error)
    assert status["b.ok"].instance == str(tmp_path / "root" / "b.ok")


def test_disabled_plugin_is_not_initialised(tmp_path: Path) -> None:
    called = []
    ps = _load([_reg("a", "x", init=lambda ic: called.append(1))], tmp_path, disabled=["a.x"])
    assert not called
    assert "skip plugin" in str(ps.ordered[0].error)


def test_required_plugin_failure_is_fatal(tmp_path: Path) -> None:
    def boom(ic: plugin.InitContext) -> None:
        raise RuntimeError("broken")

    with pytest.raises(errdefs.FailedPrecondition, match=r"a\.x \(broken\)"):
        _load([_reg("a", "x", init=boom)], tmp_path, required=["a.x"])


def test_get_by_type_and_id(tmp_path: Path) -> None:
    ps = _load([_reg("a", "x"), _reg("a", "y")], tmp_path)
    assert ps.get("a") == "a.x"
    assert ps.get_by_id("a", "y") == "a.y"
    assert set(ps.get_all("a")) == {"x", "y"}
    with pytest.raises(errdefs.NotFound):
        ps.get("zzz")
