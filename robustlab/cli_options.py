"""Options shared by the sub-commands, each defined once, and the parsing behind them.

Click options used by several commands are module-level decorators here (pip-tools' way); a command
stacks the ones it takes. Nothing here imports torch, so ``robustlab --help`` stays fast.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import click

from robustlab.budgets import Budget, parse_budget, parse_eps
from robustlab.components import ComponentSpec
from robustlab.errors import ConfigError
from robustlab.params import convert_param
from robustlab.registry import Registry

__all__ = [
    "BudgetType",
    "EpsType",
    "attack_args_option",
    "build_specs",
    "defense_args_option",
    "device_option",
    "eot_samples_option",
    "gate_options",
    "input_options",
    "model_option",
    "num_classes_option",
    "quiet_option",
    "seed_option",
    "steps_option",
    "train_data_option",
    "weights_option",
]


class EpsType(click.ParamType):  # type: ignore[type-arg]
    """A budget such as ``8/255`` or ``0.5``, in ``[0, 1]``."""

    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_eps(str(value))
        except ConfigError as error:
            self.fail(str(error), param, ctx)


class BudgetType(click.ParamType):  # type: ignore[type-arg]
    """A budget for one norm, ``linf:8/255`` or ``l2:0.5``; a bare ``8/255`` is L∞ (L2 attacks keep theirs)."""

    name = "[NORM:]EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Budget:
        if isinstance(value, Budget):
            return value
        try:
            return parse_budget(str(value))
        except ConfigError as error:
            self.fail(str(error), param, ctx)


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


def model_option(
    *, multiple: bool = False, text: str = "Architecture (robustlab list) or package.module:factory."
) -> Any:
    """``--model NAME`` (repeatable for an eval grid), with ``text`` as its help."""
    return click.option(
        "--model",
        "models" if multiple else "model",
        multiple=multiple,
        default=("smallcnn",) if multiple else "smallcnn",
        show_default=True,
        metavar="NAME",
        help=text,
    )


weights_option = click.option(
    "--weights",
    default=None,
    metavar="WEIGHTS",
    help="synth (train on the synthetic world, cached), synth-at (PGD adversarially trained), imagenet or a "
    "torchvision tag (IMAGENET1K_V2), random, or a checkpoint PATH. Default: synth for embedded nets, "
    "imagenet for torchvision nets.",
)
num_classes_option = click.option(
    "--num-classes", type=click.IntRange(min=1), default=None, help="Output classes of the model head."
)
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
steps_option = click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Iterations for every attack that takes them."
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
eot_samples_option = click.option(
    "--eot-samples",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Forward passes averaged when attacking a randomized defense.",
)
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


class _Channels(click.ParamType):  # type: ignore[type-arg]
    """Three per-channel numbers (``0.485,0.456,0.406``), one for all, or a preset name."""

    name = "R,G,B|PRESET"

    def __init__(self, which: str) -> None:
        self.which = which

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, (list, tuple)):  # a TOML list
            value = ",".join(str(v) for v in value)
        from robustlab.inputs import parse_channels  # imports torch: only when the option is given

        try:
            return parse_channels(str(value), which=self.which)
        except ConfigError as error:
            self.fail(str(error), param, ctx)


def input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--image-size``, ``--mean``, ``--std`` and resampling: how a checkpoint's inputs were prepared in training."""
    from robustlab.preprocessing import CROP_MODES, INTERPOLATIONS

    command = click.option(
        "--crop-mode",
        type=click.Choice(CROP_MODES),
        default=None,
        help="center: resize the shorter side, then centre-crop; squash: resize both sides (aspect not kept), then "
        "crop. Default: what the weights say (center).",
    )(command)
    command = click.option(
        "--interpolation",
        type=click.Choice(INTERPOLATIONS),
        default=None,
        help="Resampling filter for images of another size. Default: what the weights say (bilinear).",
    )(command)
    command = click.option(
        "--resize",
        type=click.IntRange(min=8),
        default=None,
        help="Side images are resized to before the centre crop to --image-size (e.g. 232 for 224). Default: what "
        "the weights say (torchvision's transforms, timm's crop_pct), else image-size/0.875.",
    )(command)
    for which in ("std", "mean"):
        command = click.option(
            f"--{which}",
            type=_Channels(which),
            default=None,
            help=f"Normalization {which} the checkpoint was trained with (R,G,B or imagenet, synth, none); "
            "default: the architecture's (ImageNet for torchvision nets, none for package.module:factory).",
        )(command)
    return click.option(
        "--image-size",
        type=click.IntRange(min=8),
        default=None,
        help="Side the model takes; images of another size are resized and centre-cropped to it. Default: the "
        "data's own size when all its images share one, else the model's standard size.",
    )(command)


def gate_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--tolerance`` and ``--margin-sigmas``, shared by ``eval --baseline`` and ``compare``."""
    command = click.option(
        "--margin-sigmas",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Also allow this many standard errors of the difference (binomial, from each row's n).",
    )(command)
    return click.option(
        "--tolerance",
        type=click.FloatRange(min=0),
        default=0.02,
        show_default=True,
        help="Allowed worsening of any gated metric, e.g. a drop in clean or robust accuracy (0.02 = two points).",
    )(command)
