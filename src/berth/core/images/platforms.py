"""Platforms: parsing ``os/arch/variant`` specifiers, normalising, matching.

Follows containerd's ``platforms`` package so the same specifier selects the
same manifest in both daemons:

* names are normalised (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``,
  ``armhf`` -> ``arm/v7``, an ``arm64`` variant ``v8`` is dropped because it is
  the only one, a bare ``arm`` means ``arm/v7``);
* :func:`only` matches a platform *and* those it can run (``amd64`` also runs
  ``386``; ``arm/v7`` runs ``v6`` and ``v5``; ``arm64`` runs ``arm/v8``...),
  preferring them in that order; :func:`only_strict` matches exactly;
* :func:`default_spec` is the host, with the ARM variant read from
  ``/proc/cpuinfo`` as containerd does.
"""

from __future__ import annotations

import functools
import platform as _pyplatform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from berth import errdefs

_SPECIFIER_PART = re.compile(r"[A-Za-z0-9_-]+")

_KNOWN_OS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd "
    "plan9 solaris windows zos".split()
)
_KNOWN_ARCH = frozenset(
    "386 amd64 amd64p32 arm armbe arm64 arm64be ppc64 ppc64le loong64 mips mipsle mips64 "
    "mips64le mips64p32 mips64p32le ppc riscv riscv64 s390 s390x sparc sparc64 wasm".split()
)

# uname -m -> GOARCH (the naming OCI platforms use).
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform. Compare normalised values (see :func:`normalize`)."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return format_platform(self)

    def to_json(self) -> dict[str, Any]:
        """The image-spec JSON object (keys omitted when empty)."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_json(cls, obj: object) -> Platform:
        """Build from an image-spec ``platform`` object.

        Raises InvalidArgument when ``obj`` is not an object of strings.
        """
        if not isinstance(obj, Mapping):
            raise errdefs.InvalidArgument(f"invalid platform {obj!r}: expected an object")
        features = obj.get("os.features") or ()
        if not isinstance(features, list | tuple) or not all(isinstance(f, str) for f in features):
            raise errdefs.InvalidArgument(f"invalid platform os.features {features!r}")
        values = {}
        for key in ("os", "architecture", "variant", "os.version"):
            value = obj.get(key) or ""
            if not isinstance(value, str):
                raise errdefs.InvalidArgument(
                    f"invalid platform {key} {value!r}: expected a string"
                )
            values[key] = value
        return cls(
            os=values["os"],
            architecture=values["architecture"],
            variant=values["variant"],
            os_version=values["os.version"],
            os_features=tuple(features),
        )


def format_platform(p: Platform) -> str:
    """``os/arch[/variant]``, or ``unknown`` without an OS (containerd's Format)."""
    if not p.os:
        return "unknown"
    return "/".join(part for part in (p.os, p.architecture, p.variant) if part)


def _normalize_os(os_name: str) -> str:
    if not os_name:
        return "linux"
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        # v8 is the only arm64 variant in practice, so it is left implicit.
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """Canonical names for OS, architecture and variant (an empty OS means linux)."""
    arch, variant = _normalize_arch(p.architecture, p.variant)
    return replace(p, os=_normalize_os(p.os), architecture=arch, variant=variant)


def parse_platform(specifier: str) -> Platform:
    """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant``.

    A lone known OS gets the host's architecture, a lone known architecture
    the host's OS. Raises InvalidArgument for wildcards, bad characters,
    unknown lone components and more than three parts.
    """
    if "*" in specifier:
        raise errdefs.InvalidArgument(f"{specifier!r}: wildcards not yet supported")
    parts = specifier.split("/")
    for part in parts:
        if not _SPECIFIER_PART.fullmatch(part):
            raise errdefs.InvalidArgument(
                f"{part!r} is an invalid component of {specifier!r}: platform specifier "
                f"component must match {_SPECIFIER_PART.pattern!r}"
            )
    host = default_spec()
    if len(parts) == 1:
        os_name = _normalize_os(parts[0])
        if os_name in _KNOWN_OS:
            variant = host.variant if host.architecture == "arm" and host.variant != "v7" else ""
            return Platform(os_name, host.architecture, variant)
        arch, variant = _normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in _KNOWN_ARCH:
            return Platform(host.os, arch, variant)
        raise errdefs.InvalidArgument(f"{specifier!r}: unknown operating system or architecture")
    if len(parts) == 2:
        arch, variant = _normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            # containerd leaves the default arm variant implicit here.
            variant = ""
        return Platform(_normalize_os(parts[0]), arch, variant)
    if len(parts) == 3:
        arch, variant = _normalize_arch(parts[1], parts[2])
        if arch == "arm64" and not variant:
            variant = "v8"
        return Platform(_normalize_os(parts[0]), arch, variant)
    raise errdefs.InvalidArgument(f"{specifier!r}: cannot parse platform specifier")


def _cpuinfo_field(name: str, cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


def _arm_variant(arch: str, cpuinfo: str) -> str:
    raw = _cpuinfo_field("Cpu architecture", cpuinfo)
    if raw is None:
        return ""
    if arch == "arm" and raw == "7":
        model = _cpuinfo_field("model name", cpuinfo) or ""
        if model.lower().startswith("armv6-compatible"):
            raw = "6"
    raw = raw.lower()
    if raw in ("8", "aarch64"):
        return "v8"
    if raw in ("7", "7m") or raw.startswith("?(1"):
        return "v7"
    if raw in ("6", "6tej"):
        return "v6"
    if raw in ("5", "5t", "5te", "5tej"):
        return "v5"
    return "unknown"


@functools.cache
def default_spec() -> Platform:
    """The host platform, e.g. ``linux/amd64`` or ``linux/arm64/v8``.

    Like containerd's DefaultSpec the arm64 variant is kept here (``v8``);
    matchers normalise it away. Reads ``/proc/cpuinfo`` once on ARM hosts.
    """
    machine = _pyplatform.machine().lower()
    if machine.startswith("armv") or machine == "arm":
        arch = "arm"
    else:
        arch = _MACHINE_TO_GOARCH.get(machine, machine)
    variant = ""
    if arch in ("arm", "arm64"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                variant = _arm_variant(arch, f.read())
        except OSError:
            variant = ""
    return Platform("linux", arch, variant)


class Matcher(Protocol):
    def match(self, platform: Platform) -> bool: ...


class MatchComparer(Matcher, Protocol):
    """A matcher that also ranks matches: ``less(a, b)`` if ``a`` is preferred."""

    def less(self, a: Platform, b: Platform) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Exact:
    platform: Platform

    def match(self, platform: Platform) -> bool:
        n = normalize(platform)
        return (n.os, n.architecture, n.variant) == (
            self.platform.os,
            self.platform.architecture,
            self.platform.variant,
        )


@dataclass(frozen=True, slots=True)
class Ordered:
    """Matches any of ``platforms``; earlier entries are preferred."""

    platforms: tuple[Platform, ...]

    def match(self, platform: Platform) -> bool:
        return any(_Exact(normalize(p)).match(platform) for p in self.platforms)

    def less(self, a: Platform, b: Platform) -> bool:
        for p in self.platforms:
            m = _Exact(normalize(p))
            am, bm = m.match(a), m.match(b)
            if am and not bm:
                return True
            if am or bm:
                return False
        return False

    def __str__(self) -> str:
        return ", ".join(format_platform(normalize(p)) for p in self.platforms)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Matches any of ``platforms`` with no preference among them."""

    platforms: tuple[Platform, ...]

    def match(self, platform: Platform) -> bool:
        return any(_Exact(normalize(p)).match(platform) for p in self.platforms)

    def less(self, a: Platform, b: Platform) -> bool:
        return self.match(a) and not self.match(b)


class _All:
    def match(self, platform: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False

    def __str__(self) -> str:
        return "all"


#: Matches every platform.
ALL: MatchComparer = _All()


def _vector(p: Platform) -> list[Platform]:
    """``p`` followed by the platforms it can also run, best first."""
    out = [p]
    if p.architecture == "amd64":
        level = _variant_number(p.variant)
        if level is not None and level > 1:
            out.extend(replace(p, variant=f"v{n}") for n in range(level - 1, 0, -1))
        out.append(Platform(p.os, "386", "", p.os_version, p.os_features))
    elif p.architecture == "arm":
        level = _variant_number(p.variant)
        if level is not None and level > 5:
            out.extend(replace(p, variant=f"v{n}") for n in range(level - 1, 4, -1))
    elif p.architecture == "arm64":
        out.extend(_vector(Platform(p.os, "arm", p.variant or "v8", p.os_version, p.os_features)))
    return out


def _variant_number(variant: str) -> int | None:
    try:
        return int(variant.removeprefix("v"))
    except ValueError:
        return None


def only(platform: Platform) -> Ordered:
    """``platform`` and what it can run, preferred in that order (containerd's Only)."""
    return Ordered(tuple(_vector(normalize(platform))))


def only_strict(platform: Platform) -> Ordered:
    """Exactly ``platform`` (after normalisation)."""
    return Ordered((normalize(platform),))


def default() -> Ordered:
    """The host platform and what it can run: the default for pulls."""
    return only(default_spec())


def matcher_for(specifiers: Iterable[str] | None) -> MatchComparer:
    """Matcher for a list of ``--platform`` values: none means the host default.

    Several specifiers match any of them, each with its compatible platforms.
    Raises InvalidArgument for a bad specifier.
    """
    specs = list(specifiers or ())
    if not specs:
        return default()
    if len(specs) == 1:
        return only(parse_platform(specs[0]))
    vector: list[Platform] = []
    for spec in specs:
        vector.extend(_vector(normalize(parse_platform(spec))))
    return AnyOf(tuple(vector))


def sort_by_preference(items: Sequence[Any], platform_of: Any, matcher: MatchComparer) -> list[Any]:
    """Stable sort of ``items`` so preferred platforms come first; items whose
    ``platform_of(item)`` is None go last, as containerd orders index entries."""

    def key(item: Any) -> tuple[int, int]:
        p = platform_of(item)
        if p is None:
            return (1, 0)
        return (0, _rank(matcher, p))

    return sorted(items, key=key)


def _rank(matcher: MatchComparer, p: Platform) -> int:
    if isinstance(matcher, Ordered):
        for i, candidate in enumerate(matcher.platforms):
            if _Exact(normalize(candidate)).match(p):
                return i
        return len(matcher.platforms)
    return 0 if matcher.match(p) else 1
