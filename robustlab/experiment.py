"""Experiment files: a TOML grid whose keys are exactly ``robustlab eval``'s options.

``robustlab run experiments/NAME.toml`` reproduces a published number with one command. The keys are
the eval command's own parameter names (``models``, ``attacks``, ``eps``, ``attack_args``, ``out``...),
converted by the eval command's own click types and then passed to that same command, so an
experiment file and the command line can never disagree about what an option means. Unknown keys
are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from robustlab.errors import ConfigError, DataError

__all__ = ["PROJECT", "experiment_options", "find_experiment"]

PROJECT = Path(__file__).resolve().parent.parent
"""The project the package was installed from (``experiments/`` sits beside ``robustlab/`` in a clone)."""


def find_experiment(path: Path) -> Path:
    """``path`` as given, else relative to the project, else a name in the project's ``experiments/``.

    ``robustlab run experiments/synth_pgd_sweep.toml`` and ``robustlab run synth_pgd_sweep`` then work
    from any working directory; a path that names nothing is returned as it is, for the caller's error.
    """
    folder = PROJECT / "experiments"
    for candidate in [path, PROJECT / path, folder / path, folder / f"{path}.toml"]:
        if candidate.is_file():
            return candidate
    return path


def experiment_options(path: Path, command: click.Command, ctx: click.Context) -> dict[str, Any]:
    """Read ``path`` and return the keyword arguments ``command`` takes, defaults filled in.

    Args:
        path: a TOML file with top-level ``key = value`` pairs; repeatable options take lists (a
            single value is accepted as a one-element list). Relative paths are relative to the
            working directory, as on the command line.
        command: the click command whose options the keys name (``robustlab eval``).
        ctx: the current click context, used for type conversion.

    Raises:
        DataError: the file is missing or not valid TOML.
        ConfigError: an unknown key, or a value the option's type rejects (``n = true``, ``n = 32.9`` and
            ``n = [32, 64]`` included: a value is read as the same text on the command line would be).
    """
    try:
        declared = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"cannot read experiment {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise DataError(f"experiment {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as error:
        raise DataError(f"experiment {path} is not valid TOML: {error}") from None
    params = {param.name: param for param in command.params if isinstance(param, click.Option) and param.name}
    unknown = sorted(set(declared) - set(params))
    if unknown:
        raise ConfigError(
            f"experiment {path} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(params))}"
        )
    options = dict(command.make_context(command.name, [], parent=ctx).params)  # every default, as click parses it
    for name, value in declared.items():
        param = params[name]
        try:
            options[name] = param.type_cast_value(ctx, _as_typed(value, multiple=param.multiple))
        except click.BadParameter as error:
            raise ConfigError(f"experiment {path}: key {name}: {error.message}") from None
    return options


def _as_typed(value: Any, *, multiple: bool) -> Any:
    """The command-line text of a TOML value (a list of them for a repeatable option).

    Click would cast ``True`` to the integer 1 and ``32.9`` to 32; as text, ``"true"`` and ``"32.9"`` are
    refused by an integer option exactly as on the command line.
    """
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not multiple:
        raise click.BadParameter(f"takes one value, not a list ({value!r})")
    texts = []
    for item in values:
        if isinstance(item, bool):
            texts.append(str(item).lower())
        elif isinstance(item, (str, int, float)):
            texts.append(str(item))
        else:
            raise click.BadParameter(f"{item!r} is not a string, number or boolean")
    return texts if multiple else texts[0]
