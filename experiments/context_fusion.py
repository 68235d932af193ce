"""Contextual fusion on the synthetic world: accuracy against the context correlation ``p``, per attack.

For each ``p`` (the probability that a shape's background is the one tied to its class, the world's
``context_p``) one evaluator run scores the bare object network and the fusion defenses under
transferred PGD (crafted on the bare object network, the paper's setting), adaptive PGD (end to end
through the fused model) and Gaussian blur. Every number is the evaluator's. Writes the rows as JSON
and a plot of accuracy against ``p`` (matplotlib, Agg)::

    python experiments/context_fusion.py --out out/context_fusion         # hours on 2 CPU cores (~15 min per p, n=128)
    python experiments/context_fusion.py --p 0 0.8 --eps 4/255 -n 256     # a quicker slice
    python experiments/context_fusion.py --merge a/rows.json b/rows.json --out out  # p values run apart

The scene network and the object network are trained once and cached; each ``p`` trains its heads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from robustlab.budgets import parse_eps
from robustlab.components import ComponentSpec
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.reports.report import Report

DEFENSES = {
    "none": ComponentSpec("none"),
    "fusion": ComponentSpec("context_fusion"),
    "object-only": ComponentSpec("context_fusion", (("fusion", "object"),)),
    "scene-only": ComponentSpec("context_fusion", (("fusion", "scene"),)),
    "late": ComponentSpec("context_fusion", (("fusion", "logits"),)),
    "fusion+reg": ComponentSpec("context_fusion", (("context_weight", 0.05),)),
}


def run(p: float, eps: list[float], sigmas: list[float], n: int, seed: int) -> Report:
    """One evaluator run at context correlation ``p``: every defense, PGD at each eps, blur at each sigma."""
    attacks = [ComponentSpec("pgd", (("eps", e),)) for e in eps]
    attacks += [ComponentSpec("blur", (("sigma", s),)) for s in sigmas]
    config = EvalConfig(
        data=f"synth:context_p={p}",
        defenses=tuple(DEFENSES.values()),
        attacks=tuple(attacks),
        n=n,
        seed=seed,
    )
    return Evaluator(progress=False).run(config)


def rows(report: Report, p: float) -> list[dict[str, Any]]:
    """Flat rows labelled with ``p`` and the short defense names of :data:`DEFENSES`."""
    names = {spec.label(): name for name, spec in DEFENSES.items()}
    return [
        {
            "p": p,
            "defense": names.get(row.defense, row.defense),
            "mode": row.threat_mode,
            "attack": row.attack,
            "threat": row.threat,
            "clean": row.clean_acc,
            "robust": row.robust_acc,
        }
        for row in report.rows
    ] + [
        {"p": p, "diagnostic": d.code, "defense": names.get(d.defense, d.defense), "message": d.message}
        for d in report.diagnostics
    ]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against ``p``: a clean panel, then one panel per attack setting, a line per defense and mode."""
    scored = [r for r in results if "robust" in r]
    settings = sorted({(r["attack"], r["threat"]) for r in scored})
    first = settings[0]
    panels: list[tuple[str, list[dict[str, Any]], str]] = [
        ("clean", [r for r in scored if (r["attack"], r["threat"]) == first and r["mode"] != "adaptive"], "clean")
    ]
    panels += [(f"{a} {t}", [r for r in scored if (r["attack"], r["threat"]) == (a, t)], "robust") for a, t in settings]
    labels = sorted({r["defense"] if r["mode"] in ("-", "transfer") else f"{r['defense']} (adaptive)" for r in scored})
    colors = dict(zip(labels, plt.cm.tab20.colors, strict=False))  # one colour per line, the same in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), sharey=True)
    for ax, (title, panel, metric) in zip(axes, panels, strict=True):
        lines: dict[str, list[tuple[float, float]]] = {}
        for r in panel:
            label = r["defense"] if r["mode"] in ("-", "transfer") else f"{r['defense']} (adaptive)"
            lines.setdefault(label, []).append((r["p"], r[metric]))
        for label, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points), strict=True)
            linestyle = "--" if "adaptive" in label else "-"
            ax.plot(xs, ys, marker="o", label=label, linestyle=linestyle, color=colors[label])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("context correlation p")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (transfer mode unless marked)")
    axes[-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.8, 0.95])
    parser.add_argument("--eps", nargs="+", default=["2/255", "4/255", "8/255"])
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("-n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/context_fusion"))
    parser.add_argument("--merge", type=Path, nargs="+", help="rows.json files of earlier runs: plot them together")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    eps = [parse_eps(e) for e in args.eps]
    results: list[dict[str, Any]] = []
    for path in args.merge or []:
        results += json.loads(path.read_text())
    for p in [] if args.merge else args.p:
        started = time.perf_counter()
        results += rows(run(p, eps, args.sigma, args.n, args.seed), p)
        print(f"p={p}: {time.perf_counter() - started:.0f} s", flush=True)
        (args.out / "rows.json").write_text(json.dumps(results, indent=1))
    results.sort(key=lambda r: r["p"])
    plot(results, args.out / "accuracy_vs_p.png")
    for r in results:
        if "robust" in r:
            print(
                f"p={r['p']:<5} {r['defense']:12s} {r['mode']:9s} {r['attack']:6s} {r['threat']:12s} "
                f"clean {r['clean']:.3f} robust {r['robust']:.3f}"
            )
        else:
            print(f"p={r['p']:<5} {r['defense']:12s} {r['diagnostic']}: {r['message']}")
    print(f"wrote {args.out / 'rows.json'} and {args.out / 'accuracy_vs_p.png'}")


if __name__ == "__main__":
    main()
