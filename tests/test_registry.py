from __future__ import annotations

import pytest

from robustlab.errors import UnknownNameError
from robustlab.registry import Registry


def _make() -> Registry[int]:
    registry: Registry[int] = Registry("widget")
    registry.register("alpha", summary="first")(lambda *, size=1: size)
    registry.register("beta", summary="second")(lambda: 2)
    return registry


def test_names_are_sorted_and_params_listed() -> None:
    registry = _make()
    assert registry.names() == ["alpha", "beta"]
    assert list(registry.get("alpha").params()) == ["size"]


def test_duplicate_registration_raises() -> None:
    registry = _make()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("alpha", summary="again")(lambda: 3)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="did you mean alpha"):
        _make().get("alpah")


def test_unknown_name_without_close_match_lists_all() -> None:
    with pytest.raises(UnknownNameError, match="known: alpha, beta"):
        _make().get("zzzzzz")
