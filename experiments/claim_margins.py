"""Measure every claim test's quantity over seeds and thread counts, to set its margin from the spread.

A claim test (``pytest -m claim``) asserts a method's measured gain or rate against a margin. One run on one
machine says little about the next machine: the trained parts (heads, defenses, fitted attacks) follow the
seed, and their float reductions follow the thread count. This script reruns the claim tests under each
``--seeds`` x ``--threads`` setting (``ROBUSTLAB_CLAIM_SEED``, ``OMP_NUM_THREADS``), collects what each test
records (``record_claim`` in tests/conftest.py) and prints, per quantity: the runs, their mean and standard
deviation, the 95% t-interval of the mean, and the 95% prediction interval for one more run (a new seed or
machine). A test's margin belongs below that prediction interval's lower end, and the claim holds only where
the interval of the mean excludes the null value (experiments/RESULTS-claims.md).

    python experiments/claim_margins.py --seeds 0 1 2 --threads 1 2 --out claims.jsonl
    python experiments/claim_margins.py --summarize claims.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Two-sided 95% quantiles of Student's t by degrees of freedom (the normal's beyond the table).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(dof: int) -> float:
    return T_975.get(dof, 1.96 if dof > 30 else 2.1)


def run_claims(seeds: list[int], threads: list[int], log: Path, select: str, keyword: str, home: Path) -> None:
    """Run the claim tests once per (seed, threads), appending what they record to ``log``."""
    for count in threads:
        for seed in seeds:
            env = os.environ | {
                "ROBUSTLAB_CLAIM_SEED": str(seed),
                "ROBUSTLAB_CLAIM_LOG": str(log),
                "OMP_NUM_THREADS": str(count),
                "ROBUSTLAB_TEST_KEEP_HOME": "1",
                "ROBUSTLAB_HOME": str(home / f"threads{count}"),  # the default model as trained at this count
            }
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-m",
                select,
                "-k",
                keyword,
                "-p",
                "no:cacheprovider",
                "tests",
            ]
            print(f"# seed {seed}, {count} thread(s): {' '.join(command[1:])}", flush=True)
            # a failed claim is a measurement here, not an error: its value was recorded before it was asserted
            subprocess.run(command, cwd=ROOT, env=env, check=False)  # noqa: S603


def summarize(log: Path) -> list[dict[str, object]]:
    """Per claim: runs, mean, sd, 95% interval of the mean and 95% prediction interval of one more run."""
    values: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        values[entry["claim"]].append((entry["seed"], entry["threads"], entry["value"]))
    rows = []
    for claim, runs in sorted(values.items()):
        xs = [v for _, _, v in runs]
        mean = statistics.fmean(xs)
        sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
        t = t_quantile(len(xs) - 1) if len(xs) > 1 else math.nan
        half_mean, half_next = t * sd / math.sqrt(len(xs)), t * sd * math.sqrt(1 + 1 / len(xs))
        rows.append(
            {
                "claim": claim,
                "runs": sorted(runs),
                "mean": mean,
                "sd": sd,
                "mean_interval": (mean - half_mean, mean + half_mean),
                "next_run_interval": (mean - half_next, mean + half_next),
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| claim | runs (seed/threads: value) | mean | sd | 95% CI of mean | 95% prediction (one more run) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{s}/{t}: {v:.4g}" for s, t, v in row["runs"])  # type: ignore[attr-defined]
        low, high = row["mean_interval"]  # type: ignore[misc]
        plow, phigh = row["next_run_interval"]  # type: ignore[misc]
        lines.append(
            f"| {row['claim']} | {runs} | {row['mean']:.4g} | {row['sd']:.3g} | [{low:.4g}, {high:.4g}] "
            f"| [{plow:.4g}, {phigh:.4g}] |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("-m", dest="select", default="claim", help="pytest marker expression (default: claim)")
    parser.add_argument("-k", dest="keyword", default="", help="pytest -k expression (default: every claim test)")
    parser.add_argument("--out", type=Path, default=Path("claims.jsonl"), help="JSON-lines log (appended to)")
    parser.add_argument("--home", type=Path, help="ROBUSTLAB_HOME root kept between runs (default: a temp dir)")
    parser.add_argument("--summarize", type=Path, help="only summarize this log")
    args = parser.parse_args()
    if args.summarize is None:
        home = args.home or Path(tempfile.mkdtemp(prefix="robustlab-claims-"))
        run_claims(args.seeds, args.threads, args.out.resolve(), args.select, args.keyword, home)
    log = args.summarize or args.out
    if not log.is_file():
        raise SystemExit(f"claim_margins.py: no claim was recorded in {log} (did -m/-k select any claim test?)")
    print(markdown(summarize(log)))


if __name__ == "__main__":
    main()
