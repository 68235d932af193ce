from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from robustlab.errors import ConfigError, UnknownNameError
from robustlab.params import convert_param
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


@dataclass(frozen=True)
class _Hyper:
    width: int = 4
    rate: float = 0.5
    version: int = field(default=2, init=False)


class _Widget:
    """A factory that takes its hyperparameters as ``**keywords`` and names the dataclass that declares them."""

    hyperparameters = _Hyper

    def __init__(self, **hyperparameters: Any) -> None:
        self.cfg = _Hyper(**hyperparameters)


def test_a_class_with_a_hyperparameter_dataclass_takes_its_fields_with_their_types() -> None:
    registry: Registry[_Widget] = Registry("widget")
    registry.register("w", summary="")(_Widget)
    entry = registry.get("w")
    assert list(entry.params()) == ["width", "rate"], "fields set at init only: a recipe version is not a parameter"
    assert convert_param("widget", entry, "width", "8") == 8 and convert_param("widget", entry, "rate", "1e-3") == 1e-3
    with pytest.raises(ConfigError, match="width"):
        convert_param("widget", entry, "width", "wide")
