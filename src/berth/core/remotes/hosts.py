"""Registry host configuration: containerd's ``hosts.toml`` directories.

For a registry host ``H`` (``127.0.0.1:5000``) the directory is looked up
under ``config_path`` as ``127.0.0.1_5000_`` (ports spelled that way so the
name is valid on every filesystem), then ``H`` itself, then ``_default``.
Its ``hosts.toml`` lists endpoints to try in order::

    server = "https://registry.example"        # the upstream, tried last

    [host."http://127.0.0.1:5001"]             # mirrors, tried first, in file order
      capabilities = ["pull", "resolve"]       # subset of pull, resolve, push
      ca = "ca.crt"                            # or a list; relative to the dir
      client = [["client.crt", "client.key"]]  # or "both.pem", or a list of them
      skip_verify = false
      override_path = false                    # the URL path is the API root
      [host."http://127.0.0.1:5001".header]
        x-custom = "1"

containerd 1.6 has no ``plain-http`` key: plain HTTP is chosen by writing an
``http://`` URL, or for hosts without configuration by the resolver's
``plain_http`` option (``ctr --plain-http``); loopback hosts default to HTTP
as in containerd. Without ``hosts.toml`` the directory's ``*.crt`` files are
CAs and ``*.cert``/``*.key`` pairs client certificates (Docker's
``certs.d`` layout).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any
from urllib.parse import urlsplit

from berth import errdefs

log = logging.getLogger(__name__)


class Capability(IntFlag):
    PULL = 1
    RESOLVE = 2
    PUSH = 4


ALL_CAPABILITIES = Capability.PULL | Capability.RESOLVE | Capability.PUSH


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """One endpoint serving a registry namespace."""

    host: str
    scheme: str = "https"
    path: str = "/v2"
    capabilities: Capability = ALL_CAPABILITIES
    ca_certs: tuple[str, ...] = ()
    client_pairs: tuple[tuple[str, str], ...] = ()
    skip_verify: bool | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def has(self, caps: Capability) -> bool:
        return (self.capabilities & caps) == caps

    def is_proxy(self, ref_host: str) -> bool:
        """True when this endpoint mirrors another namespace (``?ns=`` is added)."""
        if ref_host == self.host:
            return False
        return not (ref_host == "docker.io" and self.host == "registry-1.docker.io")

    def tls_key(self) -> tuple[Any, ...]:
        """What distinguishes HTTP clients: endpoints sharing it share a client."""
        return (self.scheme, self.ca_certs, self.client_pairs, self.skip_verify)


#: host name -> endpoints to try, in order.
RegistryHosts = Callable[[str], list[RegistryHost]]


def is_localhost(host: str) -> bool:
    """``localhost`` or a loopback IP, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_directory_names(host: str) -> list[str]:
    """Directory names tried for ``host``, in order."""
    names = []
    idx = host.rfind(":")
    if idx > 0:
        names.append(f"{host[:idx]}_{host[idx + 1 :]}_")
    names += [host, "_default"]
    return names


def find_host_dir(config_path: str, host: str) -> str | None:
    for name in host_directory_names(host):
        candidate = os.path.join(config_path, name)
        if os.path.isdir(candidate):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One endpoint from a host directory; ``host`` empty for the implicit upstream."""

    host: str = ""
    scheme: str = ""
    path: str = ""
    capabilities: Capability = ALL_CAPABILITIES
    ca_certs: tuple[str, ...] = ()
    client_pairs: tuple[tuple[str, str], ...] = ()
    skip_verify: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()


def parse_hosts_toml(text: str, base_dir: str) -> list[_Parsed]:
    """Parse a ``hosts.toml``: the ``[host."..."]`` entries in file order, then the
    ``server`` entry (host empty when no ``server`` is given).

    Raises InvalidArgument for invalid TOML, unknown capabilities or values
    of the wrong type, naming the key.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errdefs.InvalidArgument(f"hosts.toml in {base_dir}: invalid TOML: {exc}") from None
    out = []
    hosts = doc.get("host", {})
    if not isinstance(hosts, Mapping):
        raise errdefs.InvalidArgument(f"hosts.toml in {base_dir}: 'host' must be a table")
    for name, conf in hosts.items():
        if not isinstance(conf, Mapping):
            raise errdefs.InvalidArgument(
                f"hosts.toml in {base_dir}: host {name!r} must be a table"
            )
        out.append(_parse_host(name, base_dir, conf))
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise errdefs.InvalidArgument(f"hosts.toml in {base_dir}: 'server' must be a string")
    out.append(_parse_host(server, base_dir, doc))
    return out


def _abs(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _parse_host(server: str, base_dir: str, conf: Mapping[str, Any]) -> _Parsed:
    where = f"hosts.toml in {base_dir}" + (f", host {server!r}" if server else "")
    override_path = conf.get("override_path", False)
    if not isinstance(override_path, bool):
        raise errdefs.InvalidArgument(f"{where}: override_path must be a boolean")
    scheme = host = path = ""
    if server:
        url = server if server.startswith("http") else "https://" + server
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errdefs.InvalidArgument(f"{where}: unable to parse server {server!r}")
        scheme, host = parts.scheme, parts.netloc
        path = os.path.normpath(parts.path) if parts.path else ""
        if path and not path.endswith("/v2") and not override_path:
            path += "/v2"
        elif not path and not override_path:
            path = "/v2"

    caps = conf.get("capabilities")
    capabilities = ALL_CAPABILITIES
    if caps:
        if not isinstance(caps, list):
            raise errdefs.InvalidArgument(f"{where}: capabilities must be a list")
        capabilities = Capability(0)
        for cap in caps:
            try:
                capabilities |= Capability[str(cap).upper()]
            except KeyError:
                raise errdefs.InvalidArgument(
                    f"{where}: unknown capability {cap!r} (use pull, resolve, push)"
                ) from None

    skip_verify = conf.get("skip_verify")
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise errdefs.InvalidArgument(f"{where}: skip_verify must be a boolean")

    ca = conf.get("ca")
    ca_certs: tuple[str, ...] = ()
    if isinstance(ca, str):
        ca_certs = (_abs(ca, base_dir),)
    elif isinstance(ca, list) and all(isinstance(c, str) for c in ca):
        ca_certs = tuple(_abs(c, base_dir) for c in ca)
    elif ca is not None:
        raise errdefs.InvalidArgument(f"{where}: invalid type {type(ca).__name__} for 'ca'")

    client = conf.get("client")
    pairs: list[tuple[str, str]] = []
    if isinstance(client, str):
        pairs.append((_abs(client, base_dir), ""))
    elif isinstance(client, list):
        for item in client:
            if isinstance(item, str):
                pairs.append((_abs(item, base_dir), ""))
            elif (
                isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
            ):
                pairs.append((_abs(item[0], base_dir), _abs(item[1], base_dir)))
            else:
                raise errdefs.InvalidArgument(f"{where}: invalid pair {item!r} for 'client'")
    elif client is not None:
        raise errdefs.InvalidArgument(f"{where}: invalid type {type(client).__name__} for 'client'")

    headers: list[tuple[str, str]] = []
    raw_headers = conf.get("header")
    if raw_headers is not None:
        if not isinstance(raw_headers, Mapping):
            raise errdefs.InvalidArgument(f"{where}: header must be a table")
        for key, value in raw_headers.items():
            if isinstance(value, str):
                headers.append((key, value))
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                headers.extend((key, v) for v in value)
            else:
                raise errdefs.InvalidArgument(f"{where}: invalid type for header {key!r}")

    return _Parsed(
        host=host,
        scheme=scheme,
        path=path,
        capabilities=capabilities,
        ca_certs=ca_certs,
        client_pairs=tuple(pairs),
        skip_verify=skip_verify,
        headers=tuple(headers),
    )


def load_cert_dir(directory: str) -> list[_Parsed]:
    """Docker's ``certs.d`` layout: ``*.crt`` CAs, ``*.cert`` + ``*.key`` client pairs."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    cas: list[str] = []
    pairs: list[tuple[str, str]] = []
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            continue
        if name.endswith(".crt"):
            cas.append(path)
        elif name.endswith(".cert"):
            key = os.path.join(directory, name[: -len(".cert")] + ".key")
            pairs.append((path, key if os.path.exists(key) else ""))
    return [_Parsed(ca_certs=tuple(cas), client_pairs=tuple(pairs))]


def load_host_dir(directory: str) -> list[_Parsed]:
    """Endpoints from a host directory (``hosts.toml``, else certificate files).

    Raises InvalidArgument for a broken ``hosts.toml``. (containerd logs the
    error and falls back to the certificate files; we refuse, because a
    silently ignored mirror or CA setting is much harder to debug.)
    """
    try:
        with open(os.path.join(directory, "hosts.toml"), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if not text.strip():
        return load_cert_dir(directory)
    return parse_hosts_toml(text, directory)


def configure_hosts(
    config_path: str | None = None,
    *,
    plain_http: bool = False,
) -> RegistryHosts:
    """A :data:`RegistryHosts` function reading ``config_path`` (may be None).

    ``plain_http`` makes hosts without an explicit ``server`` URL use HTTP
    (containerd's ``DefaultScheme = "http"``). Blocking: reads small files.
    """

    def hosts(name: str) -> list[RegistryHost]:
        parsed: list[_Parsed] | None = None
        if config_path:
            directory = find_host_dir(config_path, name)
            if directory is not None:
                log.debug("loading registry host directory %s", directory)
                parsed = load_host_dir(directory)
        if parsed is None:
            parsed = [_Parsed()]
        result: list[RegistryHost] = []
        for i, p in enumerate(parsed):
            if not p.host:
                if i != len(parsed) - 1:
                    continue
                p = _default_upstream(name, p, plain_http)
            result.append(
                RegistryHost(
                    host=p.host,
                    scheme=p.scheme,
                    path=p.path or "/v2",
                    capabilities=p.capabilities,
                    ca_certs=p.ca_certs,
                    client_pairs=p.client_pairs,
                    skip_verify=p.skip_verify,
                    headers=p.headers,
                )
            )
        return result

    return hosts


def _default_upstream(name: str, p: _Parsed, plain_http: bool) -> _Parsed:
    skip_verify = p.skip_verify
    if name == "docker.io":
        host, scheme = "registry-1.docker.io", "https"
    elif is_localhost(name) and not p.ca_certs and not p.client_pairs:
        # containerd talks plain HTTP to loopback registries unless told otherwise.
        host, scheme = name, "http"
    else:
        host, scheme = name, "http" if plain_http else "https"
    return _Parsed(
        host=host,
        scheme=scheme,
        path="/v2",
        capabilities=p.capabilities,
        ca_certs=p.ca_certs,
        client_pairs=p.client_pairs,
        skip_verify=skip_verify,
        headers=p.headers,
    )
