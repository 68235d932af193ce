"""The evaluator's fast paths: early stopping, out-of-memory halving, bf16/channels-last, refused compile."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.components import ComponentSpec, load_builtin_components
from robustlab.errors import ConfigError
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.threat import Norm, ThreatModel

CONFIG = EvalConfig(attacks=(ComponentSpec("pgd", (("eps", 2 / 255), ("steps", 3))),), n=64, batch_size=32)


@pytest.mark.parametrize("name", ["pgd", "pgdl2"])
def test_early_stop_keeps_first_success_and_never_helps_the_model(
    name: str, trained_model: nn.Module, synth_batch: tuple[Tensor, Tensor]
) -> None:
    load_builtin_components()
    x, y = synth_batch[0][:64], synth_batch[1][:64]
    eps = 2 / 255 if name == "pgd" else 0.25  # budgets where this model has both fooled and robust samples
    attack = ComponentSpec(name, (("eps", eps), ("random_start", False))).build(ATTACKS)
    full = attack(trained_model, x, y)
    early = attack(trained_model, x, y, early_stop=True)
    with torch.no_grad():
        fooled_full, fooled_early = trained_model(full).argmax(1) != y, trained_model(early).argmax(1) != y
    assert 0 < fooled_full.sum() < len(y), "the budget should leave both fooled and robust samples"
    assert (fooled_early | ~fooled_full).all(), "early stopping lost a sample the full run fooled"
    never = ~fooled_early
    assert torch.allclose(early[never], full[never], atol=1e-6), "samples never fooled must follow the same path"


class _Oom(Attack):
    """Returns its input, but raises CUDA out-of-memory for calls on more than 8 samples."""

    sizes: list[int] = []  # noqa: RUF012

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, 0.0)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        _Oom.sizes.append(len(x))
        if len(x) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.clone()


def test_out_of_memory_halves_the_batch_and_says_so(register, trained_model: nn.Module) -> None:  # type: ignore[no-untyped-def]
    register(ATTACKS, "oom", _Oom)
    _Oom.sizes = []
    report = Evaluator(progress=False).run(replace(CONFIG, attacks=(ComponentSpec("oom"),)))
    (row,) = report.rows
    assert row.robust_acc == row.clean_acc, "every correct sample was attacked (by the identity) once it fitted"
    assert max(size for size in _Oom.sizes if size <= 8) == 8
    assert [d.code for d in report.diagnostics] == ["batch-halved"]


def test_bf16_channels_last_close_to_float32(trained_model: nn.Module) -> None:
    reference = Evaluator(progress=False).run(CONFIG)
    fast = Evaluator(progress=False).run(replace(CONFIG, amp="bf16", channels_last=True))
    assert [d.code for d in fast.diagnostics] == ["fast-path-check"]
    assert fast.rows[0].clean_acc == pytest.approx(reference.rows[0].clean_acc, abs=0.05)
    assert fast.rows[0].robust_acc == pytest.approx(reference.rows[0].robust_acc, abs=0.1)


def test_compile_is_refused_on_cpu() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        EvalConfig(compile=True)
