"""berth.lazy: a package's __getattr__ that imports a name's home on first read."""

from __future__ import annotations

from typing import Any

import pytest

from berth import lazy


def test_first_read_imports_the_home_and_binds_the_value() -> None:
    namespace: dict[str, Any] = {}
    getattr_ = lazy.attributes("berth.core.images", {"chain_id": "rootfs"}, namespace)
    from berth.core.images.rootfs import chain_id

    assert getattr_("chain_id") is chain_id
    assert namespace == {"chain_id": chain_id}


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    getattr_ = lazy.attributes("berth.core.images", {}, {})
    with pytest.raises(
        AttributeError, match=r"module 'berth\.core\.images' has no attribute 'nope'"
    ):
        getattr_("nope")
