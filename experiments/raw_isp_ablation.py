"""RAW/ISP ablations: is the defense carried by G's near-identity path, and what changes when G renders another camera?

G (the learned ISP) adds a linear 1x1 colour map of its input to every output level. That path lets an
image through almost unchanged, and a perturbation with it: ``no-skip`` trains G without it
(``raw_isp.skip=false``). And G is trained to reproduce the very image F unprocessed, an autoencoder, where
the paper's G maps a phone's RAW to a DSLR's rendering: ``other-camera`` trains G toward another fixed
camera's rendering (``raw_isp.g_target=other_camera``). Each variant is the tiny configuration the claim
tests use, scored beside the bare network and the default G (``skip``) under transfer and adaptive PGD;
the report's fidelity block gives each defense's PSNR against the clean input. Prints the table, the PSNR of
the other camera's rendering itself, and each variant's paired difference from ``skip``::

    python experiments/raw_isp_ablation.py --seed 0 --out raw_isp_ablation.json
    python experiments/raw_isp_ablation.py --seed 0 --variant other-camera --out raw_isp_camera.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.defenses.camera import other_camera_rendering

from robustlab.budgets import parse_eps
from robustlab.components import ComponentSpec
from robustlab.data import load_dataset
from robustlab.data.base import iterate_batches
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.metrics import psnr
from robustlab.reports.report import format_table, paired_rows

TINY_ISP = (("g_width", 6), ("f_steps", 800), ("g_steps", 600), ("n_images", 512))
SKIP = ComponentSpec("raw_isp", TINY_ISP)
VARIANTS = {
    "no-skip": ComponentSpec("raw_isp", (*TINY_ISP, ("skip", False))),
    "other-camera": ComponentSpec("raw_isp", (*TINY_ISP, ("g_target", "other_camera"))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append", help="default: all of them")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = [VARIANTS[name] for name in args.variant or sorted(VARIANTS)]
    config = EvalConfig(
        defenses=(ComponentSpec("none"), SKIP, *variants),
        attacks=(ComponentSpec("pgd", (("eps", parse_eps(args.eps)), ("steps", args.steps))),),
        n=args.n,
        seed=args.seed,
    )
    report = Evaluator(progress=False).run(config)
    report.to_json(args.out)
    print(format_table(report.rows))
    for entry in report.fidelity:
        print(f"psnr {entry.defense}: mean {entry.mean_psnr_db:.2f} dB, worst {entry.worst_psnr_db:.2f} dB")
    _, x, _ = next(iterate_batches(load_dataset(config.data), range(args.n), args.n))
    gap = psnr(other_camera_rendering(x), x)
    print(f"psnr of the other camera's rendering itself: mean {gap.mean():.2f} dB, worst {gap.min():.2f} dB")
    for variant in variants:
        for row in (r for r in report.rows if r.defense == variant.label()):
            (kept,) = [
                r
                for r in report.rows
                if r.defense == SKIP.label() and r.threat_mode == row.threat_mode and r.attack == row.attack
            ]
            difference = paired_rows(report, row, kept).describe()
            print(f"= {variant.label()} minus skip, {row.threat_mode} {row.attack}: {difference}")


if __name__ == "__main__":
    main()
