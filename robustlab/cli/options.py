"""Options shared by the sub-commands, each declared once, and the parsing behind them.

Every flag that two commands take is declared here once (pip-tools' way): a module-level decorator, or a
function where the flag means something else in another command (``--out`` is a report file for
``eval`` and a folder for ``generate``), which then takes what differs. A command stacks the ones it
takes. Nothing here imports torch, so ``robustlab --help`` stays fast.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from robustlab.budgets import Budget, parse_budget, parse_eps
from robustlab.components import ComponentSpec
from robustlab.errors import ConfigError
from robustlab.params import convert_param
from robustlab.registry import Registry

__all__ = [
    "REPORT_FORMATS",
    "BudgetType",
    "EpsType",
    "attack_args_option",
    "attack_option",
    "batch_size_option",
    "build_specs",
    "choice_option",
    "count_option",
    "data_option",
    "defense_args_option",
    "defense_option",
    "device_option",
    "eot_samples_option",
    "eps_option",
    "gate_options",
    "image_size_option",
    "input_options",
    "model_option",
    "n_option",
    "num_classes_option",
    "out_option",
    "quiet_option",
    "seed_option",
    "shard_option",
    "stacked",
    "steps_option",
    "threat_mode_option",
    "train_data_option",
    "weights_option",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

REPORT_FORMATS = ("html", "md", "csv", "png", "robustbench", "jsonl", "samples-csv")
"""What ``robustlab report --format`` renders."""


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A value parsed once from its text; the parser's :class:`ConfigError` is click's usage error."""

    parsed: tuple[type, ...] = ()
    """Types of values that are parsed already (a default given as one) and pass as they are."""

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.parsed):
            return value
        try:
            return self.parse(str(value))
        except ConfigError as error:
            self.fail(str(error), param, ctx)


class EpsType(_Parsed):
    """A budget such as ``8/255`` or ``0.5``, in ``[0, 1]``."""

    name = "EPS"
    parsed = (float,)

    def parse(self, text: str) -> float:
        return parse_eps(text)


class BudgetType(_Parsed):
    """A budget for one norm, ``linf:8/255`` or ``l2:0.5``; a bare ``8/255`` is L∞ (L2 attacks keep theirs)."""

    name = "[NORM:]EPS"
    parsed = (Budget,)

    def parse(self, text: str) -> Budget:
        return parse_budget(text)


def build_specs(
    registry: Registry[Any],
    names: Sequence[str],
    args: Sequence[str],
    *,
    shared: dict[str, Any] | None = None,
    sweep: Sequence[Budget] = (),
) -> tuple[ComponentSpec, ...]:
    """Turn ``--attack NAME`` and ``--attack-arg [NAME.]KEY=VALUE`` options into component specs.

    ``shared`` values (``--steps``) go to every component that takes them; each ``sweep`` budget
    (``--eps``, repeatable) written for a component's norm makes one spec of it (a component with a
    ``norm`` parameter takes every norm's budgets, each at its norm); a component no budget is for keeps
    its default. A scoped argument must name a component in ``names`` and a parameter it takes. A
    parameter given at its default is dropped (``--steps 10`` is PGD's default: the spec is plain ``pgd``)
    and a component asked for twice is kept once. A key given several times at one scope makes one spec per
    value (``caption_gan.target=A`` and ``caption_gan.target=B``: two goals in one run); a scoped key still
    overrides the same key given unscoped.
    """
    given: dict[tuple[str, bool], dict[str, list[Any]]] = {(n, s): {} for n in names for s in (False, True)}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{registry.kind} argument {item!r} is not of the form [NAME.]KEY=VALUE")
        target, dot, key = key.strip().rpartition(".")
        for name in [target] if dot else names:
            if name not in names:
                raise ConfigError(f"{registry.kind} argument {item!r} names {name!r}, which is not among {list(names)}")
            params = registry.get(name).params()
            if key in params:
                values = given[name, bool(dot)].setdefault(key, [])
                values.append(convert_param(registry.kind, registry.get(name), key, value))
            elif dot or len(names) == 1:
                raise ConfigError(f"{registry.kind} {name} has no parameter {key!r}; it takes: {', '.join(params)}")
    specs: list[ComponentSpec] = []
    for name in names:
        params = registry.get(name).params()
        chosen = given[name, False] | given[name, True]
        for choice in itertools.product(*chosen.values()):
            base = {k: v for k, v in (shared or {}).items() if k in params and v is not None}
            base.update(zip(chosen, choice, strict=True))
            budgets = _budgets_for(registry, name, base, sweep) if "eps" in params and "eps" not in chosen else []
            for extra in budgets or [{}]:
                spec = ComponentSpec(name, tuple({**base, **extra}.items())).without_defaults(registry)
                if spec not in specs:  # the same component asked for twice is one row, not two of one label
                    specs.append(spec)
    return tuple(specs)


def _budgets_for(
    registry: Registry[Any], name: str, base: dict[str, Any], sweep: Sequence[Budget]
) -> list[dict[str, Any]]:
    """The ``eps`` (and ``norm``) values of each ``sweep`` budget written for component ``name``'s norm."""
    if not sweep:
        return []
    free_norm = "norm" in registry.get(name).params() and "norm" not in base
    built = registry.get(name).factory(**base)  # its threat says its norm; building is cheap (no model)
    norm = str(getattr(getattr(built, "threat", None), "norm", "linf"))
    chosen: list[dict[str, Any]] = []
    for budget in sweep:
        if budget.applies_to(norm):
            chosen.append({"eps": budget.eps})
        elif free_norm and budget.norm is not None:
            chosen.append({"norm": budget.norm, "eps": budget.eps})
    return chosen


def stacked(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` as if written one above the other (``--help`` lists them in order)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def choice_option(flag: str, choices: Sequence[str], text: str) -> Decorator:
    """``flag`` taking one of ``choices``, the first unless given."""
    return click.option(flag, type=click.Choice(list(choices)), default=choices[0], show_default=True, help=text)


def count_option(flag: str, default: int, text: str, *, minimum: int = 1) -> Decorator:
    """``flag`` taking a whole number of at least ``minimum``, ``default`` unless given."""
    return click.option(flag, type=click.IntRange(min=minimum), default=default, show_default=True, help=text)


def _names_option(flag: str, default: str, text: str, *, multiple: bool) -> Decorator:
    """``--FLAG NAME`` of a registry, defaulting to ``default``; repeatable (into ``FLAGs``) where ``multiple``."""
    return click.option(
        f"--{flag}",
        f"{flag}s" if multiple else flag,
        multiple=multiple,
        default=(default,) if multiple else default,
        show_default=True,
        metavar="NAME",
        help=text,
    )


def model_option(
    *, multiple: bool = False, text: str = "Architecture (robustlab list) or package.module:factory."
) -> Decorator:
    """``--model NAME`` (repeatable for an eval grid), with ``text`` as its help."""
    return _names_option("model", "smallcnn", text, multiple=multiple)


weights_option = click.option(
    "--weights",
    default=None,
    metavar="WEIGHTS",
    help="synth (train on the synthetic world, cached), synth-at (PGD adversarially trained), synth-trades "
    "(TRADES-trained), imagenet or a torchvision tag (IMAGENET1K_V2), random, or a checkpoint PATH. Default: "
    "synth for embedded nets, imagenet for torchvision nets.",
)


def num_classes_option(text: str = "Output classes of the model head.") -> Decorator:
    """``--num-classes N``; ``text`` says where the default comes from when it is not the weights."""
    return click.option("--num-classes", type=click.IntRange(min=1), default=None, help=text)


def image_size_option(
    text: str = "Side the model takes; images of another size are resized and centre-cropped to it. Default: the "
    "data's own size when all its images share one, else the model's standard size.",
) -> Decorator:
    """``--image-size N``: the side the model takes."""
    return click.option("--image-size", type=click.IntRange(min=8), default=None, help=text)


def data_option(text: str = "synth[:k=v,...], cifar10[:ROOT], imagefolder:PATH.") -> Decorator:
    """``--data SPEC``; ``text`` says which of its splits a command reads, where that is not the test split."""
    return click.option("--data", default="synth", show_default=True, metavar="SPEC", help=text)


def attack_option(*, multiple: bool) -> Decorator:
    """``--attack NAME``: the attacks of an eval grid (``multiple``), or the one per-input attack of a generation."""
    text = "Attack to run; repeat for several (each also gets a worst-case row)." if multiple else "A per-input attack."
    return _names_option("attack", "pgd", text, multiple=multiple)


def defense_option(*, multiple: bool) -> Decorator:
    """``--defense NAME``, repeatable for an eval grid (``multiple``)."""
    repeat = "; repeat for a grid" if multiple else ""
    return _names_option("defense", "none", f"Defense in front of the model{repeat}.", multiple=multiple)


def eps_option(*, multiple: bool = False, training: bool = False) -> Decorator:
    """``--eps``: attack budgets for any norm (``multiple``: a sweep), or adversarial training's one L∞ budget."""
    if training:
        return click.option(
            "--eps", type=EpsType(), default="8/255", show_default=True, help="L∞ budget of adversarial training."
        )
    repeat, whose = ("; repeat for a sweep or several norms", "each attack's") if multiple else ("", "the attack's")
    return click.option(
        "--eps",
        multiple=multiple,
        type=BudgetType(),
        default=None,
        help=f"Budget per norm in [0, 1] pixel units: linf:8/255, l2:0.5{repeat}. A bare 8/255 is L∞ only: L2 "
        f"attacks keep their own budget unless given l2:EPS. Default: {whose} standard budget (L∞ 8/255, L2 0.5).",
    )


def threat_mode_option(*, both: bool) -> Decorator:
    """``--threat-mode``: how a defended model is attacked; an eval grid may take ``both`` modes (its default)."""
    if both:
        text = "the bare model (transfer), the whole pipeline (adaptive), or both"
        return choice_option("--threat-mode", ["both", "transfer", "adaptive"], f"For defenses: attack {text}.")
    text = "the whole pipeline (adaptive) or the bare model (transfer)"
    return choice_option("--threat-mode", ["adaptive", "transfer"], f"For defenses: attack {text}.")


def n_option(text: str) -> Decorator:
    """``--n``/``-n``: how many samples a command takes; ``text`` says which."""
    return click.option("--n", "-n", type=int, default=1000, show_default=True, help=text)


def shard_option(text: str) -> Decorator:
    """``--shard K/N``: one job of N; ``text`` says what the job writes."""
    return click.option("--shard", metavar="K/N", default=None, help=text)


def batch_size_option(default: int, *, positive: bool = False) -> Decorator:
    """``--batch-size``, checked at parse time (``positive``) or later by the config it goes to (eval's)."""
    kind = click.IntRange(min=1) if positive else int
    return click.option("--batch-size", type=kind, default=default, show_default=True)


def steps_option(text: str = "Iterations for every attack that takes them.") -> Decorator:
    """``--steps N``: the attacks' iterations, or in ``train`` the optimizer's."""
    return click.option("--steps", type=click.IntRange(min=1), default=None, help=text)


def out_option(text: str, *, folder: bool = False, required: bool = True, short: bool = False) -> Decorator:
    """``--out`` (also ``-o`` where ``short``): the file, or the ``folder``, a command writes; ``text`` says what."""
    path = click.Path(file_okay=False, path_type=Path) if folder else click.Path(dir_okay=False, path_type=Path)
    flags = ("-o", "--out") if short else ("--out",)
    return click.option(*flags, type=path, required=required, default=None, help=text)


attack_args_option = click.option(
    "--attack-arg",
    "attack_args",
    multiple=True,
    metavar="[ATTACK.]KEY=VALUE",
    help="Any attack parameter, e.g. pgd.step_size=1/255 or n_restarts=5.",
)
defense_args_option = click.option(
    "--defense-arg", "defense_args", multiple=True, metavar="[DEFENSE.]KEY=VALUE", help="Any defense parameter."
)
train_data_option = click.option(
    "--train-data",
    default=None,
    metavar="SPEC",
    help="Data that learned defenses train on (default: the train split of --data).",
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="Makes the run repeatable to the last digit.",
)
eot_samples_option = count_option("--eot-samples", 20, "Forward passes averaged when attacking a randomized defense.")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


class _Channels(_Parsed):
    """Three per-channel numbers (``0.485,0.456,0.406``), one for all, or a preset name."""

    name = "R,G,B|PRESET"

    def __init__(self, which: str) -> None:
        self.which = which

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (list, tuple)):  # a TOML list
            value = ",".join(str(v) for v in value)
        return super().convert(value, param, ctx)

    def parse(self, text: str) -> tuple[float, ...]:
        from robustlab.inputs import parse_channels  # imports torch: only when the option is given

        return parse_channels(text, which=self.which)


def _channels_option(which: str) -> Decorator:
    return click.option(
        f"--{which}",
        type=_Channels(which),
        default=None,
        help=f"Normalization {which} the checkpoint was trained with (R,G,B or imagenet, synth, none); "
        "default: the architecture's (ImageNet for torchvision nets, none for package.module:factory).",
    )


def input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--image-size``, ``--mean``, ``--std`` and resampling: how a checkpoint's inputs were prepared in training."""
    from robustlab.preprocessing import CROP_MODES, INTERPOLATIONS

    return stacked(
        image_size_option(),
        _channels_option("mean"),
        _channels_option("std"),
        click.option(
            "--resize",
            type=click.IntRange(min=8),
            default=None,
            help="Side images are resized to before the centre crop to --image-size (e.g. 232 for 224). Default: what "
            "the weights say (torchvision's transforms, timm's crop_pct), else image-size/0.875.",
        ),
        click.option(
            "--interpolation",
            type=click.Choice(INTERPOLATIONS),
            default=None,
            help="Resampling filter for images of another size. Default: what the weights say (bilinear).",
        ),
        click.option(
            "--crop-mode",
            type=click.Choice(CROP_MODES),
            default=None,
            help="center: resize the shorter side, then centre-crop; squash: resize both sides (aspect not kept), "
            "then crop. Default: what the weights say (center).",
        ),
    )(command)


def _allowance(flag: str, default: float, text: str) -> Decorator:
    return click.option(flag, type=click.FloatRange(min=0), default=default, show_default=True, help=text)


gate_options = stacked(
    _allowance(
        "--tolerance",
        0.02,
        "Allowed worsening of any gated metric, e.g. a drop in clean or robust accuracy (0.02 = two points).",
    ),
    _allowance(
        "--margin-sigmas", 0.0, "Also allow this many standard errors of the difference (binomial, from each row's n)."
    ),
)
"""``--tolerance`` and ``--margin-sigmas``, shared by ``eval --baseline`` and ``compare``."""
