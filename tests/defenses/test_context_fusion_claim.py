"""The seed's claim, measured by the evaluator: fusing scene features helps when the context is informative.

Measured on 2026-11-30 (n=256, PGD-5 L∞ 4/255, blur sigma 1.5, heads of 300 steps on 2048 images), with
context_p=0.8: clean 100% bare and fused; transferred PGD 62.5% bare -> 70.7% fused; blur 13.7% -> 18.4%;
the object-only ablation head (same training data, no scene) 60.5% and 13.7%. The end-to-end (adaptive)
PGD on the fused model: 69.5%. With context_p=0 see RESULTS-context_fusion.md.

Margins (experiments/RESULTS-claims.md): each is the measured mean minus two standard deviations of the
quantity over the heads' seeds and thread counts (``experiments/claim_margins.py``), so a machine that
satisfies the dependencies passes. The PGD gain: +7.4, +11.3, +8.2 points over seeds 0-2 at 1 thread,
+4.7 at 2 threads; mean - 2 sd = +2.5 points, the margin (the first margin, 4 points, is inside the spread).
The blur gain does not survive as a margin: +4.3, +4.3, +7.8 (1 thread), +3.1 (2 threads) points here,
+1.2 and +1.5 on a fresh environment (torch 2.15, 2 and 1 threads); mean +3.7, mean - 2 sd = -1.1 points.
The test asserts what survives: fusion costs no more than 1.5 points under blur. Without context the gains
are PGD -1.6, -2.3, -2.7, -3.1 and blur +1.2, +1.6, -0.4, +2.7 points: mean + 2 sd is -1.1 and +3.9 points,
the upper bounds asserted.

Re-measured 2026-12-06 after #24's first-fooling rule (a defended row keeps each sample's first point that
fools the scored model), seeds 0-2 at 1 thread and seed 0 at 2 threads: the transferred PGD gain is +5.5,
+10.9, +9.8 and +5.5 points (mean - 2 sd = +2.1): every run is above the +2.5-point margin, which stays.
The control is the object-only head attacked the same way: end to end (adaptive) the fused model keeps +9.0,
+10.9, +12.9 and +7.8 points over it (paired on the same 256 samples): mean - 2 sd = +5.7, the margin +5 points.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from robustlab.components import ComponentSpec
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.reports.report import Report, Row, paired_rows

HEAD = (("n_train", 2048), ("steps", 300))
PGD = ComponentSpec("pgd", (("eps", 4 / 255), ("steps", 5)))
BLUR = ComponentSpec("blur", (("sigma", 1.5),))
FUSED = ComponentSpec("context_fusion", HEAD)
OBJECT_ONLY = ComponentSpec("context_fusion", (("fusion", "object"), *HEAD))
"""The control: the same head recipe on the object stream alone, attacked the same way."""


pytestmark = pytest.mark.claim


def _report(context_p: float, seed: int, *controls: ComponentSpec) -> Report:
    config = EvalConfig(
        data=f"synth:context_p={context_p}",
        defenses=(ComponentSpec("none"), FUSED, *controls),
        attacks=(PGD, BLUR),
        n=256,
        diagnostics=False,
        seed=seed,
    )
    return Evaluator(progress=False).run(config)


@pytest.fixture(scope="module")
def informative(trained_model: object, claim_seed: int) -> Report:
    return _report(0.8, claim_seed, OBJECT_ONLY)


@pytest.fixture(scope="module")
def uninformative(trained_model: object, claim_seed: int) -> Report:
    return _report(0.0, claim_seed)


def _find(report: Report, defense: str, mode: str, attack: str) -> Row:
    label = FUSED.label() if defense == "context_fusion" else defense
    (row,) = [r for r in report.rows if r.defense == label and r.threat_mode == mode and r.attack.startswith(attack)]
    return row


def _row(report: Report, defense: str, mode: str, attack: str) -> tuple[float, float]:
    row = _find(report, defense, mode, attack)
    assert row.clean_acc is not None and row.robust_acc is not None
    return row.clean_acc, row.robust_acc


def test_fusion_keeps_clean_accuracy(informative: Report, record_claim: Callable[[str, float], None]) -> None:
    bare, _ = _row(informative, "none", "-", "pgd")
    fused, _ = _row(informative, "context_fusion", "transfer", "pgd")
    record_claim("fusion.clean_change", fused - bare)
    assert fused >= bare - 0.01


def test_fusion_raises_accuracy_under_transferred_pgd_and_blur(
    informative: Report, record_claim: Callable[[str, float], None]
) -> None:
    for attack, margin in (("pgd", 0.025), ("blur", -0.015)):
        _, bare = _row(informative, "none", "-", attack)
        _, fused = _row(informative, "context_fusion", "transfer", attack)
        record_claim(f"fusion.{attack}_gain", fused - bare)
        assert fused > bare + margin, (attack, fused, bare)


@pytest.mark.xfail(
    strict=False,
    reason="the blur gain's first claim (> +2 points) is inside its spread: +1.2 to +7.8 points over seeds and "
    "environments, mean +3.7 (experiments/RESULTS-claims.md)",
)
def test_blur_gain_as_first_claimed(informative: Report) -> None:
    _, bare = _row(informative, "none", "-", "blur")
    _, fused = _row(informative, "context_fusion", "transfer", "blur")
    assert fused > bare + 0.02


@pytest.mark.parametrize(
    ("attack", "bound"),
    [
        pytest.param(
            "pgd",
            0.0,
            marks=pytest.mark.xfail(
                reason="fused - bare, seeds 0-2: -1.6 to -3.1 points on AVX2 CPUs (4 runs); on an AVX-512 CPU -3.1, "
                "-1.2, -3.1 (1 thread) and +0.4, -2.0, -3.9 (2 threads; mean -2.1, sd 1.6): the seed-0, 2-thread "
                "run is above 0 (experiments/RESULTS-claims.md)",
                raises=AssertionError,
                strict=False,
            ),
        ),
        ("blur", 0.04),
    ],
)
def test_gain_vanishes_without_context(
    uninformative: Report, record_claim: Callable[[str, float], None], attack: str, bound: float
) -> None:
    _, bare = _row(uninformative, "none", "-", attack)
    _, fused = _row(uninformative, "context_fusion", "transfer", attack)
    record_claim(f"fusion.{attack}_gain_without_context", fused - bare)
    assert fused < bare + bound, (attack, fused, bare)


def test_fusion_beats_its_object_only_control_under_the_adaptive_attack(
    informative: Report, record_claim: Callable[[str, float], None]
) -> None:
    """Fused minus object-only head, both attacked end to end by the same PGD, paired sample by sample: the gain
    the scene stream buys against an attacker who knows it (``adaptive <= transfer`` held for the bare net too)."""
    fused = _find(informative, "context_fusion", "adaptive", "pgd")
    control = _find(informative, OBJECT_ONLY.label(), "adaptive", "pgd")
    gain = paired_rows(informative, fused, control)
    record_claim("fusion.adaptive_gain_over_object_only", gain.difference)
    assert gain.difference > 0.05, gain.describe()  # +7.8 to +12.9 points over 4 runs (RESULTS-claims.md)
