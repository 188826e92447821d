"""Pytest fixtures for registries and test images.

Loaded by the root ``tests/conftest.py`` via
``pytest_plugins = ["tests.support.fixtures"]``; test modules may also import
fixtures from here by name.

Everything expensive is session-scoped: one plain-HTTP registry, lazily
started TLS and basic-auth registries, and the standard images (each built
once). Tests that push should use :func:`push_image` with the per-test
``repo_name`` so they never collide on a repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.imagebuilder import (
    Image,
    Index,
    Target,
    build_busybox_image,
    build_layered_image,
    build_multiplatform_index,
    push,
)
from tests.support.registry import Registry, registry_available

__all__ = [
    "TEST_PASSWORD",
    "TEST_USER",
    "PushedImage",
    "auth_registry",
    "busybox_image",
    "layered_image",
    "multiplatform_index",
    "push_image",
    "push_to",
    "registry",
    "repo_name",
    "tls_registry",
]

TEST_USER = "berth"
TEST_PASSWORD = "berth-secret"


@dataclass(frozen=True)
class PushedImage:
    """Where :func:`push_to` put something: ``ref`` is ``HOST/REPO:TAG``."""

    host: str
    repo: str
    tag: str
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def ref_by_digest(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"


def push_to(registry: Registry, target: Target, repo: str, tag: str = "latest") -> PushedImage:
    """Push *target* to *registry* (using its scheme, CA and credentials)."""
    digest = push(
        target,
        registry.host,
        repo,
        tag,
        plain_http=registry.plain_http,
        auth=registry.auth,
        verify=registry.verify,
    )
    return PushedImage(registry.host, repo, tag, digest)


def _start(**kwargs: object) -> Registry:
    if not registry_available():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    return Registry(**kwargs).start()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A plain-HTTP registry on 127.0.0.1 shared by the whole session."""
    reg = _start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def tls_registry() -> Iterator[Registry]:
    """An HTTPS registry; trust it with ``.ca_cert`` / ``.certs_dir`` / ``.verify``."""
    reg = _start(tls=True)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    """An HTTPS registry with basic auth (TEST_USER / TEST_PASSWORD, also ``.auth``)."""
    reg = _start(tls=True, htpasswd={TEST_USER: TEST_PASSWORD})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def busybox_image() -> Image:
    """The single-layer OCI busybox image for the host platform (gzip)."""
    return build_busybox_image()


@pytest.fixture(scope="session")
def layered_image() -> Image:
    """Busybox plus ``sample_layer_specs()`` (whiteouts, opaque dir, links)."""
    return build_layered_image()


@pytest.fixture(scope="session")
def multiplatform_index() -> Index:
    """OCI index: the host busybox image plus a marker-only foreign platform."""
    return build_multiplatform_index()


@pytest.fixture(scope="session")
def push_image(registry: Registry) -> Callable[..., PushedImage]:
    """``push_image(target, repo, tag="latest") -> PushedImage`` on the session registry."""

    def _push(target: Target, repo: str, tag: str = "latest") -> PushedImage:
        return push_to(registry, target, repo, tag)

    return _push


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the requesting test, valid for the registry."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"test/{name[:100] or 'repo'}"
