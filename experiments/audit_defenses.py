"""The published defense claims re-measured under ``--attack audit``, each defense beside its control.

``fusion``: the bare object network, the fused model and the object-only head (the same head recipe on the
object stream alone: the control), on the world with informative context (``context_p=0.8``).
``raw_isp``: the bare network (the control) and the tiny RAW/ISP configuration the claim tests train.
Prints the rows with their 95% intervals, the audit's verdicts, and the paired interval of each defense
minus its control per threat mode (same samples: :func:`robustlab.reports.report.paired_rows`)::

    python experiments/audit_defenses.py fusion -n 128 --out fusion-audit.json
    python experiments/audit_defenses.py raw_isp -n 128 --audit-arg steps=100 --out raw_isp-audit.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.budgets import parse_eps
from robustlab.components import ComponentSpec
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.params import convert_param
from robustlab.reports.report import Report, format_table, paired_rows

HEAD = (("n_train", 2048), ("steps", 300))
TINY_ISP = (("g_width", 6), ("f_steps", 800), ("g_steps", 600), ("n_images", 512))
PARTS = {
    "fusion": (
        "synth:context_p=0.8",
        ComponentSpec("context_fusion", (("fusion", "object"), *HEAD)),
        (ComponentSpec("context_fusion", HEAD),),
    ),
    "raw_isp": ("synth", ComponentSpec("none"), (ComponentSpec("raw_isp", TINY_ISP),)),
}
"""Per part: the data, the control, and the defenses compared with it."""


def audit_spec(eps: float, args: list[str]) -> ComponentSpec:
    """``audit`` at ``eps`` with ``KEY=VALUE`` budget overrides."""
    from robustlab.attacks import ATTACKS  # importing the package registers the attacks

    entry = ATTACKS.get("audit")
    params = [(key, convert_param("attack", entry, key, value)) for key, _, value in (a.partition("=") for a in args)]
    return ComponentSpec("audit", (("eps", eps), *params))


def compare(report: Report, control: str, defenses: list[str]) -> list[str]:
    """One line per defense and threat mode: defense minus control, paired sample by sample."""
    lines = []
    for defense in defenses:
        for row in (r for r in report.rows if r.defense == defense):
            mode = row.threat_mode
            (base,) = [r for r in report.rows if r.defense == control and r.threat_mode in (mode, "-")]
            lines.append(f"{defense} {mode} minus {control}: {paired_rows(report, row, base).describe()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", default=None, help="L∞ budget (default: 4/255 for fusion, 8/255 for raw_isp)")
    parser.add_argument("--audit-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--without-bare", action="store_true", help="fusion: leave the bare network's row out")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data, control, defenses = PARTS[args.part]
    eps = parse_eps(args.eps or ("4/255" if args.part == "fusion" else "8/255"))
    extra = (ComponentSpec("none"),) if args.part == "fusion" and not args.without_bare else ()
    config = EvalConfig(
        data=data,
        defenses=(*extra, control, *defenses),
        attacks=(audit_spec(eps, args.audit_arg),),
        n=args.n,
        seed=args.seed,
        diagnostics=False,  # the audit's own verdict is the check here; the masking probes are another run's
    )
    report = Evaluator(progress=False).run(config)
    report.to_json(args.out)
    print(format_table(report.rows))
    for diagnostic in report.diagnostics:
        print(f"! {diagnostic.code} [{diagnostic.defense}]: {diagnostic.message}")
    for line in compare(report, control.label(), [d.label() for d in defenses]):
        print(f"= {line}")


if __name__ == "__main__":
    main()
