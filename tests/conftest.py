"""Shared fixtures: a private weights cache for the session and one trained default model.

Training the default model once per session (about a minute on 2 CPU cores) is what lets attack
tests assert real accuracy drops instead of running on random weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

_HOME_KEY = "ROBUSTLAB_HOME"


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test imports robustlab code, so nothing writes to the user's real cache.
    if not os.environ.get("ROBUSTLAB_TEST_KEEP_HOME"):
        import tempfile

        os.environ[_HOME_KEY] = tempfile.mkdtemp(prefix="robustlab-test-home-")


@pytest.fixture(scope="session")
def trained_model() -> torch.nn.Module:
    """The default classifier (smallcnn) trained on the synthetic world, shared by the session."""
    from robustlab.models import load_model

    return load_model("smallcnn", weights="synth", progress=False)


@pytest.fixture(scope="session")
def synth_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 128 samples of the synthetic test split."""
    from robustlab.data.synth import SynthDataset

    return SynthDataset("test").get_batch(torch.arange(128))


@pytest.fixture
def register() -> Iterator[Any]:
    """Register a component in a registry for one test only."""
    added: list[tuple[Any, str]] = []

    def _register(registry: Any, name: str, factory: Any, **tags: Any) -> None:
        registry.register(name, summary="test-only component", **tags)(factory)
        added.append((registry, name))

    yield _register
    for registry, name in added:
        del registry._entries[name]
