"""Unit tests for the registry client's pure parsers: references, hosts.toml,
WWW-Authenticate challenges and Docker config.json credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.remotes import (
    Capability,
    Credentials,
    Reference,
    chain_credentials,
    configure_hosts,
    parse_docker_config,
    parse_hosts_toml,
    parse_www_authenticate,
    static_credentials,
)
from berth.core.remotes.auth import Authorizer, parse_challenge
from berth.core.remotes.errors import Unauthorized
from berth.core.remotes.hosts import host_directory_names, is_localhost

DIGEST = "sha256:" + "ab" * 32


# -- references -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("index.docker.io/user/app", "docker.io/user/app:latest"),
        ("127.0.0.1:5000/test/busybox", "127.0.0.1:5000/test/busybox:latest"),
        ("localhost/app:dev", "localhost/app:dev"),
        ("registry.example/a/b/c:v1", "registry.example/a/b/c:v1"),
        (f"127.0.0.1:5000/x@{DIGEST}", f"127.0.0.1:5000/x@{DIGEST}"),
        (f"ghcr.io/o/r:tag@{DIGEST}", f"ghcr.io/o/r:tag@{DIGEST}"),
    ],
)
def test_reference_normalisation(text: str, expected: str) -> None:
    assert str(Reference.parse(text)) == expected


def test_reference_parts() -> None:
    ref = Reference.parse(f"127.0.0.1:5000/team/app:v2@{DIGEST}")
    assert ref.domain == "127.0.0.1:5000"
    assert ref.repository == "team/app"
    assert ref.tag == "v2"
    assert str(ref.digest) == DIGEST
    assert ref.object == f"v2@{DIGEST}"
    assert ref.name == "127.0.0.1:5000/team/app"
    assert Reference.parse("127.0.0.1:5000/app", default_tag=False).tag is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("https://registry.example/app", "without a URL scheme"),
        ("registry.example/App", "must be lowercase"),
        ("registry.example/app:bad tag", "bad tag"),
        ("registry.example/app@sha256:abc", "needs 64 hex"),
        (f"registry.example/app@md5:{'0' * 32}", "unsupported digest algorithm 'md5'"),
        ("registry.example/a//b", "bad repository name"),
        ("registry.example/" + "a" * 300, "must not exceed 255"),
    ],
)
def test_reference_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        Reference.parse(text)


# -- hosts.toml -------------------------------------------------------------


def test_hosts_toml_mirrors_in_order_then_server(tmp_path: Path) -> None:
    text = """
server = "https://registry.example"

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://mirror.example/base"]
  capabilities = ["pull"]
  ca = ["ca.crt", "/etc/abs.crt"]
  client = [["client.crt", "client.key"], "both.pem"]
  [host."https://mirror.example/base".header]
    x-one = "1"
    x-many = ["a", "b"]
"""
    parsed = parse_hosts_toml(text, str(tmp_path))
    assert [(p.scheme, p.host, p.path) for p in parsed] == [
        ("http", "127.0.0.1:5001", "/v2"),
        ("https", "mirror.example", "/base/v2"),
        ("https", "registry.example", "/v2"),
    ]
    assert parsed[0].capabilities == Capability.PULL | Capability.RESOLVE
    assert parsed[0].skip_verify is True
    assert parsed[1].capabilities == Capability.PULL
    assert parsed[1].ca_certs == (str(tmp_path / "ca.crt"), "/etc/abs.crt")
    assert parsed[1].client_pairs == (
        (str(tmp_path / "client.crt"), str(tmp_path / "client.key")),
        (str(tmp_path / "both.pem"), ""),
    )
    assert parsed[1].headers == (("x-one", "1"), ("x-many", "a"), ("x-many", "b"))
    assert parsed[2].capabilities == Capability.PULL | Capability.RESOLVE | Capability.PUSH


def test_hosts_toml_override_path(tmp_path: Path) -> None:
    (parsed,) = parse_hosts_toml(
        'server = "https://r.example/custom/api"\noverride_path = true\n', str(tmp_path)
    )
    assert parsed.path == "/custom/api"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = [", "invalid TOML"),
        ('[host."https://m"]\ncapabilities = ["fly"]', "unknown capability 'fly'"),
        ('[host."https://m"]\nskip_verify = "yes"', "skip_verify must be a boolean"),
        ('[host."https://m"]\nca = 3', "invalid type int for 'ca'"),
        ('[host."https://m"]\nclient = [["a", "b", "c"]]', "invalid pair"),
    ],
)
def test_hosts_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        parse_hosts_toml(text, str(tmp_path))


def test_configure_hosts_directory_lookup_and_defaults(tmp_path: Path) -> None:
    assert host_directory_names("127.0.0.1:5000") == [
        "127.0.0.1_5000_",
        "127.0.0.1:5000",
        "_default",
    ]
    d = tmp_path / "registry.example_8443_"
    d.mkdir()
    (d / "hosts.toml").write_text('[host."http://127.0.0.1:9999"]\n  capabilities = ["pull"]\n')
    hosts = configure_hosts(str(tmp_path))
    mirror, upstream = hosts("registry.example:8443")
    assert mirror.base_url == "http://127.0.0.1:9999/v2"
    assert mirror.is_proxy("registry.example:8443")
    assert upstream.base_url == "https://registry.example:8443/v2"
    assert not upstream.is_proxy("registry.example:8443")

    (local,) = hosts("127.0.0.1:5000")  # loopback defaults to plain HTTP
    assert local.scheme == "http"
    (docker,) = hosts("docker.io")
    assert docker.host == "registry-1.docker.io" and not docker.is_proxy("docker.io")
    (plain,) = configure_hosts(None, plain_http=True)("registry.example")
    assert plain.scheme == "http"


def test_configure_hosts_cert_dir_fallback(tmp_path: Path) -> None:
    d = tmp_path / "secure.example"
    d.mkdir()
    (d / "ca.crt").write_text("x")
    (d / "client.cert").write_text("x")
    (d / "client.key").write_text("x")
    (host,) = configure_hosts(str(tmp_path))("secure.example")
    assert host.ca_certs == (str(d / "ca.crt"),)
    assert host.client_pairs == ((str(d / "client.cert"), str(d / "client.key")),)


def test_is_localhost() -> None:
    assert is_localhost("localhost:5000") and is_localhost("127.0.0.1") and is_localhost("[::1]:80")
    assert not is_localhost("registry.example:5000")


# -- WWW-Authenticate --------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    c = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert c is not None and c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


def test_parse_challenges_orders_and_drops_unknown() -> None:
    values = ['Basic realm="r"', "Negotiate abc", 'Bearer realm="t",error="insufficient_scope"']
    assert [c.scheme for c in parse_www_authenticate(values)] == ["bearer", "basic"]


def test_parse_challenge_quoting_and_garbage() -> None:
    c = parse_challenge(r'Bearer realm="a \"quoted\" realm", service=plain')
    assert c is not None and c.params == {"realm": 'a "quoted" realm', "service": "plain"}
    assert parse_challenge("") is None
    broken = parse_challenge('Basic realm="unterminated')
    assert broken is not None and broken.params == {}


def test_authorizer_without_credentials_explains_how_to_pass_them() -> None:
    auth = Authorizer()
    with pytest.raises(Unauthorized, match=r"r\.example:5000 requires authentication.*credentials"):
        auth.handle_unauthorized(
            "r.example:5000", ['Basic realm="x"'], url="https://r", retried=False
        )


def test_authorizer_refused_credentials_name_user_not_secret() -> None:
    auth = Authorizer(static_credentials("r.example", "bob", "hunter2"))
    auth.handle_unauthorized("r.example", ['Basic realm="x"'], url="u", retried=False)
    with pytest.raises(Unauthorized) as info:
        auth.handle_unauthorized("r.example", ['Basic realm="x"'], url="u", retried=True)
    assert "bob" in str(info.value) and "hunter2" not in str(info.value)


# -- credentials -------------------------------------------------------------


def test_docker_config_auth_and_username_password() -> None:
    text = json.dumps(
        {
            "auths": {
                "127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3:cret").decode()},
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                "token.example": {"identitytoken": "refresh-me"},
            }
        }
    )
    table = parse_docker_config(text)
    assert table["127.0.0.1:5000"] == Credentials("alice", "s3:cret")
    lookup = chain_credentials(
        None,
        static_credentials("x.example", "x", "y"),
        lambda host: None,
        lambda host: table.get(host),
    )
    assert lookup("x.example") == Credentials("x", "y")
    from berth.core.remotes import credentials_from_table

    by_host = credentials_from_table(table)
    assert by_host("docker.io") == Credentials("bob", "pw")
    assert by_host("token.example") == Credentials("", "refresh-me")
    assert by_host("unknown.example") is None
    assert "s3:cret" not in repr(table["127.0.0.1:5000"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        (
            '{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}',
            r"auths\['h'\].auth is not base64 of user:password",
        ),
        ('{"auths": []}', "'auths' must be an object"),
    ],
)
def test_docker_config_errors(text: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        parse_docker_config(text)
