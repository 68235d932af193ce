"""RAW/ISP without G's skip: is the defense's transfer robustness carried by its near-identity path?

G (the learned ISP) adds a linear 1x1 colour map of its input to every output level. That path lets an
image through almost unchanged, and a perturbation with it. This script trains the tiny configuration the
claim tests use twice, with and without the skip (``raw_isp.skip=false``), and scores both beside the
bare network under transfer and adaptive PGD; the report's fidelity block gives each defense's PSNR.
Prints the table and each paired difference (no skip minus skip, per threat mode and attack)::

    python experiments/raw_isp_ablation.py --seed 0 --out raw_isp_ablation.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.budgets import parse_eps
from robustlab.evaluate import ComponentSpec, EvalConfig, Evaluator
from robustlab.report import format_table, paired_rows

TINY_ISP = (("g_width", 6), ("f_steps", 800), ("g_steps", 600), ("n_images", 512))
WITH_SKIP = ComponentSpec("raw_isp", TINY_ISP)
WITHOUT_SKIP = ComponentSpec("raw_isp", (*TINY_ISP, ("skip", False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = EvalConfig(
        defenses=(ComponentSpec("none"), WITH_SKIP, WITHOUT_SKIP),
        attacks=(ComponentSpec("pgd", (("eps", parse_eps(args.eps)), ("steps", args.steps))),),
        n=args.n,
        seed=args.seed,
    )
    report = Evaluator(progress=False).run(config)
    report.to_json(args.out)
    print(format_table(report.rows))
    for entry in report.fidelity:
        print(f"psnr {entry.defense}: mean {entry.mean_psnr_db:.2f} dB, worst {entry.worst_psnr_db:.2f} dB")
    for ablated in (r for r in report.rows if r.defense == WITHOUT_SKIP.label()):
        (kept,) = [
            r
            for r in report.rows
            if r.defense == WITH_SKIP.label() and r.threat_mode == ablated.threat_mode and r.attack == ablated.attack
        ]
        difference = paired_rows(report, ablated, kept).describe()
        print(f"= no skip minus skip, {ablated.threat_mode} {ablated.attack}: {difference}")


if __name__ == "__main__":
    main()
