"""The seed's claim, measured by the evaluator: RAW/ISP preprocessing defeats transferred attacks.

Numbers measured on 2026-11-24 with experiments/raw_isp.toml (n=256): clean 100% -> 98.05% behind the
defense; PGD 8/255 transfer 3.1% bare -> 66.0% defended; adaptive PGD 8/255 through G∘F 9.0%.

The tiny configuration below (seconds to train) is far weaker, and its clean cost follows the seed. Over
seeds 0-2 (1 thread, n=128, experiments/RESULTS-claims.md): clean -3.1, -14.1, -7.8 points; transfer PGD
+60.9, +50.0, +54.7 points; transfer FGSM 2/255 -1.6, -14.1, -12.5 points (below the bare model: what the
defense costs clean, FGSM at 2/255 does not take back); adaptive minus transfer PGD -51, -48, -53 points;
PSNR 25.3, 22.2, 23.1 dB. Each margin is the mean minus (or plus) two standard deviations. The first
margins (clean within 3 points, FGSM no worse than bare, PSNR > 24 dB) held at seed 0 only; they are
restated as measured.

Re-measured 2026-12-06 after #24's first-fooling rule, seeds 0 and 1: transfer PGD +57.8 and +55.5 points over
bare, adaptive minus transfer -46.9 and -52.3 points, and adaptive PGD 8/255 through G∘F against the bare
network under the same PGD (the control) +10.9 and +3.1 points. That gain does not survive the rule (mean
- 2 sd is -4.0 points): what is asserted is that the defense costs no more than 4 points against the attacker
who knows it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from robustlab.components import ComponentSpec
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.reports.report import Report

pytestmark = pytest.mark.claim
TINY = (("g_width", 6), ("f_steps", 800), ("g_steps", 600), ("n_images", 512))


@pytest.fixture(scope="module")
def report(trained_model: nn.Module, claim_seed: int) -> Report:
    config = EvalConfig(
        defenses=(ComponentSpec("none"), ComponentSpec("raw_isp", TINY)),
        attacks=(ComponentSpec("fgsm", (("eps", 2 / 255),)), ComponentSpec("pgd", (("eps", 8 / 255),))),
        n=128,
        diagnostics=False,
        seed=claim_seed,
    )
    return Evaluator(progress=False).run(config)


def _row(report: Report, defense: str, mode: str, attack: str) -> float:
    (row,) = [r for r in report.rows if r.defense.startswith(defense) and r.threat_mode == mode and r.attack == attack]
    return row.robust_acc


def test_clean_accuracy_cost_stays_in_its_measured_range(
    report: Report, record_claim: Callable[[str, float], None]
) -> None:
    bare = next(r for r in report.rows if r.defense == "none")
    defended = next(r for r in report.rows if r.defense.startswith("raw_isp"))
    record_claim("raw_isp.clean_change", defended.clean_acc - bare.clean_acc)
    assert defended.clean_acc >= bare.clean_acc - 0.19


def test_transfer_attacks_are_defeated(report: Report, record_claim: Callable[[str, float], None]) -> None:
    record_claim(
        "raw_isp.transfer_pgd_gain", _row(report, "raw_isp", "transfer", "pgd") - _row(report, "none", "-", "pgd")
    )
    record_claim(
        "raw_isp.transfer_fgsm_gain", _row(report, "raw_isp", "transfer", "fgsm") - _row(report, "none", "-", "fgsm")
    )
    assert _row(report, "raw_isp", "transfer", "pgd") > _row(report, "none", "-", "pgd") + 0.3
    assert _row(report, "raw_isp", "transfer", "fgsm") >= _row(report, "none", "-", "fgsm") - 0.23


def test_adaptive_attack_is_compared_with_the_bare_network_and_flagged(
    report: Report, record_claim: Callable[[str, float], None]
) -> None:
    """The control is the bare network under the same PGD: what the defense buys against an attacker who
    differentiates it (``adaptive < transfer`` alone says nothing: the bare network passes it too)."""
    adaptive = _row(report, "raw_isp", "adaptive", "pgd")
    record_claim("raw_isp.adaptive_minus_transfer_pgd", adaptive - _row(report, "raw_isp", "transfer", "pgd"))
    record_claim("raw_isp.adaptive_gain_over_bare_pgd", adaptive - _row(report, "none", "-", "pgd"))
    assert adaptive < _row(report, "raw_isp", "transfer", "pgd")
    # +10.9, +3.1, +1.6 (1 thread), +10.9 (2 threads) points: mean - 2 sd is -3.3, rounded down to -4
    assert adaptive > _row(report, "none", "-", "pgd") - 0.04
    assert any(d.code == "oblivious_only" for d in report.diagnostics)


def test_report_states_the_reconstruction_quality(report: Report, record_claim: Callable[[str, float], None]) -> None:
    (fidelity,) = report.fidelity
    record_claim("raw_isp.psnr_db", fidelity.mean_psnr_db)
    assert fidelity.defense.startswith("raw_isp") and fidelity.n == 128
    assert fidelity.mean_psnr_db > 20  # 25.3, 22.2, 23.1 dB over seeds 0-2 (mean - 2 sd: 20.3)
