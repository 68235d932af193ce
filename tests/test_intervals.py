"""Intervals on accuracies: Wilson's on one row, Newcombe's paired one on the difference of two rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from robustlab.intervals import paired_difference, wilson_interval, with_interval
from robustlab.reports.report import Report, Row, format_table, paired_rows
from robustlab.reports.tables import markdown_table


def test_wilson_matches_its_closed_form_and_stays_inside_0_1() -> None:
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)  # (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(1.0, 20)[0] < 0.9
    assert wilson_interval(0.0, 20)[0] == 0.0 and wilson_interval(0.0, 20)[1] > 0.1
    assert with_interval(0.516, 256) == "51.6% ±6.1"


def _pairs(rng: random.Random, n: int, p_first: float, p_second: float, agree: float) -> tuple[list[bool], list[bool]]:
    """Two correlated Bernoulli rows: with probability ``agree`` the second copies the first, else draws anew."""
    first = [rng.random() < p_first for _ in range(n)]
    second = [a if rng.random() < agree else rng.random() < p_second for a in first]
    return first, second


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    truth = 0.0  # both rows have the same marginal accuracy: 0.4 (the copy keeps it, the fresh draw is 0.4 too)
    covered = [paired_difference(*_pairs(rng, 100, 0.4, 0.4, 0.7)) for _ in range(1000)]
    rate = sum(d.low <= truth <= d.high for d in covered) / len(covered)
    assert 0.93 <= rate <= 0.98
    # pairing pays: the interval is narrower than two independent Wilson intervals would allow
    d = covered[0]
    independent = 2 * 1.96 * (2 * 0.4 * 0.6 / 100) ** 0.5
    assert d.high - d.low < 0.8 * independent


def test_paired_difference_says_whether_a_gain_is_inside_the_noise() -> None:
    same = paired_difference([True, False] * 50, [True, False] * 50)
    assert same.difference == 0 and same.within_noise()
    gain = paired_difference([True] * 30 + [False] * 70, [False] * 100)
    assert gain.difference == pytest.approx(0.3) and not gain.within_noise()
    assert "outside the noise" in gain.describe() and "+30.0 points" in gain.describe()
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([True], [True, False])


def _row(defense: str, robust: float) -> Row:
    return Row("m", defense, "-", "pgd", "linf 8/255", 4, 0.75, robust, 0.5, None, None, 1.0)


def test_rows_carry_their_intervals_through_json_table_and_markdown(tmp_path: Path) -> None:
    row = _row("none", 0.25)
    assert row.robust_interval == wilson_interval(0.25, 4) and row.clean_interval == wilson_interval(0.75, 4)
    report = Report(config={}, environment={}, rows=[row])
    report.to_json(tmp_path / "r.json")
    assert Report.from_json(tmp_path / "r.json").rows[0].robust_interval == row.robust_interval
    assert with_interval(0.25, 4) in format_table([row]) and with_interval(0.25, 4) in markdown_table([row])


def test_paired_rows_read_the_per_sample_results_of_one_report() -> None:
    def block(defense: str, adv: list[int]) -> dict[str, object]:
        return {
            "model": "m", "defense": defense, "threat_mode": "-", "task": "classification", "index": [7, 8, 9, 10],
            "label": [0, 1, 2, 3], "clean_pred": [0, 1, 2, 0],
            "attacks": [{"attack": "pgd", "threat": "linf 8/255", "adv_pred": adv, "success": []}],
        }  # fmt: skip

    report = Report(
        config={},
        environment={},
        rows=[_row("a", 0.5), _row("b", 0.25)],
        samples=[block("a", [0, 1, 0, 0]), block("b", [0, 0, 0, 0])],
    )
    d = paired_rows(report, report.rows[0], report.rows[1])
    assert d.n == 4 and d.difference == pytest.approx(0.25)
