"""Shared fixtures: a private weights cache for the session and one trained default model.

Training the default model once per session (about three minutes on 2 CPU cores) is what lets attack
tests assert real accuracy drops instead of running on random weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

_HOME_KEY = "ROBUSTLAB_HOME"
_CLAIM_SEED_KEY = "ROBUSTLAB_CLAIM_SEED"
_CLAIM_LOG_KEY = "ROBUSTLAB_CLAIM_LOG"
# The fixtures below that train a model (minutes on 2 CPU cores in a fresh session): every test that uses
# one, directly or through another fixture, is marked slow, so `pytest -m "not slow"` never waits for them.
TRAINING_FIXTURES = frozenset({"trained_model", "resnet18_checkpoint"})


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test imports robustlab code, so nothing writes to the user's real cache.
    if not os.environ.get("ROBUSTLAB_TEST_KEEP_HOME"):
        import tempfile

        os.environ[_HOME_KEY] = tempfile.mkdtemp(prefix="robustlab-test-home-")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment for a robustlab child process that loads this session's trained models.

    Trained weights are cached per thread count (``robustlab.cache.numerics``), and torchrun starts its
    ranks at one thread: a child given any other count than this process would train its own models.
    """
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.fixture(scope="session")
def robustlab_process(child_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m robustlab ARGS`` in a child process (:func:`child_env`), or as ``ranks`` CPU ranks of
    ``torchrun`` on this machine; the completed process, its output captured as text."""

    def run(*args: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
        command = [sys.executable, *launcher, "-m", "robustlab", *args]
        return subprocess.run(command, capture_output=True, text=True, env=child_env, check=False)

    return run


@pytest.fixture(scope="session")
def claim_seed() -> int:
    """The seed of a claim test's trained parts (heads, defenses, fitted attacks): 0 in the suite.

    ``experiments/claim_margins.py`` reruns the claim tests under other seeds (``ROBUSTLAB_CLAIM_SEED``) and
    thread counts to measure each claim's spread, from which the tests' margins are set.
    """
    return int(os.environ.get(_CLAIM_SEED_KEY, "0"))


@pytest.fixture(scope="session")
def record_claim() -> Callable[[str, float], None]:
    """Record a claim test's measured quantity before it is asserted.

    Appends ``{"claim", "value", "seed", "threads"}`` to the JSON-lines file named by ``ROBUSTLAB_CLAIM_LOG``
    when set (``experiments/claim_margins.py`` sets it); otherwise does nothing.
    """

    def record(claim: str, value: float) -> None:
        log = os.environ.get(_CLAIM_LOG_KEY)
        if not log:
            return
        entry = {"claim": claim, "value": float(value), "seed": int(os.environ.get(_CLAIM_SEED_KEY, "0"))}
        entry["threads"] = torch.get_num_threads()
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")

    return record


@pytest.fixture(scope="session")
def trained_model() -> torch.nn.Module:
    """The default classifier (smallcnn) trained on the synthetic world, shared by the session."""
    from robustlab.models.loading import load_model

    return load_model("smallcnn", weights="synth", progress=False)


@pytest.fixture(scope="session")
def synth_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 128 samples of the synthetic test split."""
    from robustlab.data.synth import SynthDataset

    return SynthDataset("test").get_batch(torch.arange(128))


@pytest.fixture
def same_with_early_stop(trained_model: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``check(loop, x, y, *args, **kwargs)``: run a row loop (:func:`~robustlab.attacks.autoattack._apgd.apgd`,
    :func:`~robustlab.attacks.autoattack._fab.fab`) on the trained model with and without early stop and check that a
    sample stopped at its first fooling iterate is the one the full run reports (same points, same samples, fooling the
    model); return the full run's ``(x_adv, fooled)``. ``kwargs`` are the other fields of its ``RowLoop``."""
    from robustlab.attacks.autoattack._apgd import RowLoop

    def check(
        loop: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        y: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stopped, fooled_stopped = loop(trained_model, x, y, *args, RowLoop(early_stop=True, **kwargs))
        full, fooled_full = loop(trained_model, x, y, *args, RowLoop(early_stop=False, **kwargs))
        assert 0 < int(fooled_full.sum()) < len(x), "the budget should leave samples on both sides"
        assert torch.equal(fooled_stopped, fooled_full)
        assert torch.equal(stopped, full)
        with torch.no_grad():
            assert bool((trained_model(full[fooled_full]).argmax(1) != y[fooled_full]).all())
        return full, fooled_full

    return check


PLAIN_RESNET18 = {"steps": 300, "batch": 64, "seed": 0, "lr": 2e-3}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImagenetNormalized(torch.nn.Module):
    """A user's own pipeline around a torchvision net: ImageNet normalization outside the net, [0, 1] inputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@pytest.fixture(scope="session")
def resnet18_checkpoint() -> Path:
    """A torchvision resnet18 state dict trained at 32x32 by a plain PyTorch loop (not robustlab's training path).

    Cached in ``ROBUSTLAB_HOME`` by its config: it stands for a checkpoint a user trained elsewhere
    (tests/models/test_user_models.py) and for "a small torchvision net" (the AutoAttack parity test).
    """
    import torch.nn.functional as F
    import torchvision

    from robustlab.cache import cache_dir
    from robustlab.data.synth import SynthDataset

    steps, batch, seed, lr = (PLAIN_RESNET18[k] for k in ("steps", "batch", "seed", "lr"))
    path = cache_dir("test-fixtures") / f"resnet18-synth32-steps{steps}-batch{batch}-seed{seed}.pt"
    if path.is_file():
        return path
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=10)
    model = ImagenetNormalized(net).train()
    train = SynthDataset("train")
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = train.get_batch(torch.randint(len(train), (batch,), generator=generator))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(net.state_dict(), partial)
    partial.replace(path)  # atomic: concurrent sessions may share the cache
    return path


@pytest.fixture(scope="session")
def plain_resnet18(resnet18_checkpoint: Path) -> torch.nn.Module:
    """The plain-loop resnet18 of :func:`resnet18_checkpoint`, loaded with its normalization, in eval mode."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(resnet18_checkpoint, weights_only=True))
    return ImagenetNormalized(net).eval()


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
