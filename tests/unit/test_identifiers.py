"""Identifier and label rules, as containerd enforces them."""

from __future__ import annotations

import pytest

from berth import errdefs, identifiers, labels, namespaces


@pytest.mark.parametrize("name", ["default", "k8s.io", "a", "a-b_c.d", "A1", "x" * 76])
def test_valid_identifiers(name: str) -> None:
    identifiers.validate(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a..b", "a b", "ünï", "a/b", "x" * 77, "a__b"])
def test_invalid_identifiers(name: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        identifiers.validate(name)


def test_label_size_limit() -> None:
    labels.validate({"k": "v" * 4095})
    with pytest.raises(errdefs.InvalidArgument, match="greater than maximum size"):
        labels.validate({"k": "v" * 4096})


def test_namespace_from_metadata() -> None:
    assert namespaces.required([("containerd-namespace", "k8s.io")]) == "k8s.io"
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        namespaces.required([])
    with pytest.raises(errdefs.InvalidArgument):
        namespaces.required([("containerd-namespace", "no way")])
