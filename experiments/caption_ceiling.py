"""The reachability ceiling of caption goals: what strong per-image attacks reach at each L∞ budget.

Before asking a generator to force a caption, ask whether any attack can: decoder-loss PGD (Show-and-Fool's
margins through the whole captioner) and feature PGD (the GAN's own objective, per image), each with many
steps and random restarts (an image stops at the first restart whose greedy caption reaches the goal), over a
sweep of budgets ending with an unbounded one (eps = 1: any image is allowed). Unbounded decoder-loss PGD must
reach nearly every goal the captioner can write; if it does not, the machinery (goal features, source filter,
scoring) is wrong, not the world.

Sources are the first ``--n`` test images whose clean greedy caption misses the goal (inputs already
captioned as the goal never count). For a target caption, success is also split by how many of the caption's
words the clean caption has wrong (the synthetic world's four slots: size, colour, shape, background).
Intervals are 95% Wilson; p is one-sided Fisher exact against noise of the same budget.

Run from the repository root (2 shared CPU cores, one torch thread)::

    python experiments/caption_ceiling.py --threads 1 --n 64 > ceiling.md
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import robustlab.attacks  # noqa: F401  (registers the caption attacks)
import torch

from robustlab.attack import ATTACKS
from robustlab.caption_metrics import fisher_p_above, goal_reached
from robustlab.captioning import load_captioner, tokenize
from robustlab.data.captions import SynthCaptions
from robustlab.intervals import wilson_interval
from robustlab.threat import parse_eps

UNBOUNDED = "unbounded"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="source test images per goal")
    parser.add_argument("--test-n", type=int, default=2000, help="test images searched for sources")
    parser.add_argument("--fit-n", type=int, default=2000, help="validation images feature PGD finds its target in")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--targets", type=int, nargs="+", default=[0, 1, 2], help="val indices: goal captions")
    parser.add_argument("--keywords", nargs="+", default=["hexagon", "purple", "stripes"])
    parser.add_argument("--eps", nargs="+", default=["8/255", "16/255", "32/255", "64/255", UNBOUNDED])
    parser.add_argument("--attacks", nargs="+", default=["caption_decoder_pgd", "caption_feature_pgd", "caption_noise"])
    parser.add_argument(
        "--max-away", type=int, help="target captions only: keep sources at most this many words from the target"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (1 on a crowded machine)")
    return parser.parse_args()


def words_away(clean: str, target: str) -> int:
    """Slots of ``clean`` that differ from ``target`` (captions of one template have one length)."""
    a, b = tokenize(clean), tokenize(target)
    return sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    victim = load_captioner(progress=False)
    fit, test = SynthCaptions("val", n=args.fit_n), SynthCaptions("test", n=args.test_n)
    x_all = test.images_and_captions(torch.arange(len(test)))[0]
    clean_all = victim.caption(x_all)
    goals: list[dict[str, Any]] = [
        {"target": victim.caption(fit.images_and_captions(torch.tensor([i]))[0])[0]} for i in args.targets
    ] + [{"keyword": k} for k in ([] if args.max_away else args.keywords)]
    print(f"steps {args.steps} x restarts {args.restarts}, seed {args.seed}, sources from {len(test)} test images\n")
    print("| goal | eps | attack | n | success [95% CI] | p vs noise | by words away (reached/n) | s |")
    print("|---|---|---|---:|---|---:|---|---:|")
    for goal in goals:
        keep = [i for i, c in enumerate(clean_all) if not goal_reached(c, **_goal_args(goal))]
        if args.max_away:
            keep = [i for i in keep if words_away(clean_all[i], goal["target"]) <= args.max_away]
        keep = keep[: args.n]
        x = x_all[keep]
        label = f"caption `{goal['target']}`" if "target" in goal else f"keyword `{goal['keyword']}`"
        for eps_text in args.eps:
            eps = 1.0 if eps_text == UNBOUNDED else parse_eps(eps_text)
            noise_hits: int | None = None
            for name in sorted(args.attacks, key=lambda a: a != "caption_noise"):  # noise first: the floor
                started = time.perf_counter()
                attack = ATTACKS.get(name).factory(**goal, eps=eps, **_hyper(name, args))
                attack.fit(victim, fit, generator=torch.Generator().manual_seed(args.seed), progress=False)
                x_adv = attack(
                    victim, x, torch.zeros(len(x), dtype=torch.long), generator=torch.Generator().manual_seed(args.seed)
                )
                reached = [goal_reached(c, **_goal_args(goal)) for c in victim.caption(x_adv)]
                hits, n = sum(reached), len(reached)
                low, high = wilson_interval(hits / n, n)
                if name == "caption_noise":
                    noise_hits, p_text = hits, "-"
                else:
                    p_text = f"{fisher_p_above(hits, n, noise_hits, n):.2g}" if noise_hits is not None else "-"
                print(
                    f"| {label} | {eps_text} | {name} | {n} | {hits / n:.3f} [{low:.3f}, {high:.3f}] | {p_text} "
                    f"| {_by_distance(goal, [clean_all[i] for i in keep], reached)} "
                    f"| {time.perf_counter() - started:.0f} |",
                    flush=True,
                )


def _goal_args(goal: dict[str, Any]) -> dict[str, str | None]:
    return {"target": goal.get("target"), "keyword": goal.get("keyword")}


def _by_distance(goal: dict[str, Any], clean: list[str], reached: list[bool]) -> str:
    if "target" not in goal:
        return "-"
    away = [words_away(c, goal["target"]) for c in clean]
    totals, hits = Counter(away), Counter(d for d, r in zip(away, reached, strict=True) if r)
    return ", ".join(f"{d}: {hits[d]}/{totals[d]}" for d in sorted(totals))


def _hyper(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "caption_noise":
        return {}
    extra = {"scan": args.fit_n} if name == "caption_feature_pgd" else {}
    return {"steps": args.steps, "restarts": args.restarts} | extra


if __name__ == "__main__":
    main()
