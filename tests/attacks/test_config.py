"""Each registered attack's ``config()``, threat and keyword parameters, pinned as hand-written constructors had them.

``config()`` is recorded in every report row and goes into cache keys, the registry's parameters are what
``--attack-args`` and ``robustlab list`` read: a change to how attacks are declared must leave all three as they
are (same keys in the same order, same values of the same types, enums as their values).
"""

from __future__ import annotations

import enum
import inspect
import typing
from typing import Any

import pytest
import robustlab.attacks

ATTACKS = robustlab.attacks.ATTACKS

AUDIT = {
    "eps": 8 / 255,
    "norm": "linf",
    "steps": 200,
    "restarts": 5,
    "queries": 5000,
    "aa_steps": 100,
    "eps_factors": "1/4,1/2,2,4",
    "sweep_steps": "10,25,50,100",
}
AUTOATTACK = {"eps": 8 / 255, "norm": "linf"}
GOAL = {"target": "a cat", "keyword": None, "eps": 8 / 255}
ADVENCODER = {
    "mode": "per",
    "eps": 10 / 255,
    "patch_frac": 0.03,
    "alpha": 5.0,
    "hfc": 1.0,
    "radius": None,
    "temperature": 0.1,
    "epochs": 20,
    "n_fit": 2048,
    "batch_size": 128,
    "lr": 2e-4,
    "noise_dim": 100,
    "noise_batch": 64,
    "unclipped_training": False,
    "bound": "clamp",
    "diagnostics": [],
}
FOOLING = {
    "encoding": "cppn",
    "generations": 400,
    "population": 64,
    "init_size": None,
    "image_size": None,
    "ten_crop": None,
    "coord_mode": "unit",
    "color": "hls",
    "max_hidden": 32,
    "halve_every": 1000,
    "objective": "softmax",
    "decay": 0.0,
    "blur_radius": 0.0,
    "blur_every": 1,
    "checkpoint_every": 10,
    "batch_size": 256,
}
UAP = {"eps": 10 / 255, "epochs": 5, "n_fit": 2048, "batch_size": 128, "step_size": 10 / 255 / 8, "clip": 9.0}

# name -> (arguments, config(), threat.describe()); the arguments are the defaults where the attack has them
# (a caption attack needs its goal), then cases whose config depends on a conversion or a derived default.
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("advencoder", {}, ADVENCODER, "linf 10/255"),
    (
        "advencoder",
        {"mode": "pat", "load": "delta.safetensors"},
        {"load": "delta.safetensors"} | ADVENCODER | {"mode": "pat"},
        "patch 0.03",
    ),
    (
        "apgd",
        {},
        {"eps": 8 / 255, "norm": "linf", "steps": 100, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot": 1},
        "linf 8/255",
    ),
    (
        "apgd",
        {"norm": "l2", "eps": 0.5, "loss": "dlr"},
        {"eps": 0.5, "norm": "l2", "steps": 100, "n_restarts": 1, "loss": "dlr", "rho": 0.75, "eot": 1},
        "l2 0.5",
    ),
    (
        "apgdt",
        {},
        {"eps": 8 / 255, "norm": "linf", "steps": 100, "n_restarts": 1, "n_target_classes": 9, "rho": 0.75},
        "linf 8/255",
    ),
    ("audit", {}, AUDIT, "linf 8/255"),
    ("audit", {"norm": "l2", "eps": 0.5}, AUDIT | {"norm": "l2", "eps": 0.5}, "l2 0.5"),
    ("audit-rand", {}, AUDIT, "linf 8/255"),
    ("autoattack", {}, AUTOATTACK, "linf 8/255"),
    ("autoattack", {"norm": "l2", "eps": 0.5}, {"eps": 0.5, "norm": "l2"}, "l2 0.5"),
    ("autoattack-fast", {}, AUTOATTACK, "linf 8/255"),
    ("autoattack-plus", {}, AUTOATTACK, "linf 8/255"),
    ("autoattack-rand", {}, AUTOATTACK, "linf 8/255"),
    ("blur", {}, {"sigma": 1.0}, "unbounded"),
    ("blur", {"sigma": 2}, {"sigma": 2.0}, "unbounded"),
    (
        "caption_decoder_pgd",
        {"target": "a cat"},
        GOAL | {"steps": 50, "restarts": 1, "margin": 5.0, "mode": "targeted"},
        "linf 8/255",
    ),
    (
        "caption_feature_pgd",
        {"target": "a cat"},
        GOAL | {"steps": 50, "restarts": 1, "objective": "features", "n_targets": 1, "scan": 2000, "mode": "targeted"},
        "linf 8/255",
    ),
    (
        "caption_feature_pgd",
        {"keyword": "cat"},
        GOAL
        | {"target": None, "keyword": "cat"}
        | {"steps": 50, "restarts": 1, "objective": "features", "n_targets": 8, "scan": 2000, "mode": "keyword"},
        "linf 8/255",
    ),
    (
        "caption_gan",
        {"target": "a cat"},
        GOAL
        | {
            "steps": 600,
            "batch_size": 32,
            "lr": 1e-2,
            "adv_weight": 0.01,
            "pert_weight": 0.0,
            "pert_bound": 0.3,
            "objective": "features",
            "margin": 5.0,
            "n_targets": 1,
            "scan": 2000,
            "mode": "targeted",
        },
        "linf 8/255",
    ),
    ("caption_noise", {"target": "a cat"}, GOAL | {"mode": "targeted"}, "linf 8/255"),
    ("cw", {}, {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01, "eps": None}, "l2 unbounded"),
    ("cw", {"eps": 0.5}, {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01, "eps": 0.5}, "l2 0.5"),
    ("deepfool", {}, {"steps": 50, "overshoot": 0.02, "eps": None}, "l2 unbounded"),
    ("fgsm", {}, {"eps": 8 / 255}, "linf 8/255"),
    ("fooling", {}, FOOLING, "unbounded"),
    ("fooling", {"encoding": "gradient"}, FOOLING | {"encoding": "gradient", "generations": 500}, "unbounded"),
    ("noise", {}, {"eps": 10 / 255}, "linf 10/255"),
    ("none", {}, {}, "linf 0"),
    ("pgd", {}, {"eps": 8 / 255, "step_size": 8 / 255 / 4, "steps": 10, "random_start": True}, "linf 8/255"),
    (
        "pgd",
        {"eps": 4 / 255, "step_size": 1 / 255},
        {"eps": 4 / 255, "step_size": 1 / 255, "steps": 10, "random_start": True},
        "linf 4/255",
    ),
    ("pgdl2", {}, {"eps": 0.5, "step_size": 0.125, "steps": 10, "random_start": True}, "l2 0.5"),
    (
        "square",
        {},
        {"eps": 8 / 255, "norm": "linf", "n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "rescale_schedule": True},
        "linf 8/255",
    ),
    ("uap", {}, UAP, "linf 10/255"),
    (
        "uap",
        {"load": "delta.safetensors", "eps": 8 / 255},
        {"load": "delta.safetensors"} | UAP | {"eps": 8 / 255, "step_size": 8 / 255 / 8},
        "linf 8/255",
    ),
]

# name -> {parameter: (annotation, default)} of the factory, as ``Entry.params`` and ``--attack-args`` read them.
NORM = "robustlab.threat.Norm | str"
GOAL_PARAMS = {"target": ("str | None", None), "keyword": ("str | None", None), "eps": ("float", 8 / 255)}
PARAMS: dict[str, dict[str, tuple[str, Any]]] = {
    "advencoder": {
        "mode": ("str", "per"),
        "eps": ("float", 10 / 255),
        "patch_frac": ("float", 0.03),
        "alpha": ("float", 5.0),
        "hfc": ("float", 1.0),
        "radius": ("float | None", None),
        "temperature": ("float", 0.1),
        "epochs": ("int", 20),
        "n_fit": ("int", 2048),
        "batch_size": ("int", 128),
        "lr": ("float", 2e-4),
        "noise_dim": ("int", 100),
        "noise_batch": ("int", 64),
        "unclipped_training": ("bool", False),
        "bound": ("str", "clamp"),
        "load": ("str | None", None),
    },
    "apgd": {
        "eps": ("float", 8 / 255),
        "norm": (NORM, "linf"),
        "steps": ("int", 100),
        "n_restarts": ("int", 1),
        "loss": ("str", "ce"),
        "rho": ("float", 0.75),
        "eot": ("int", 1),
    },
    "apgdt": {
        "eps": ("float", 8 / 255),
        "norm": (NORM, "linf"),
        "steps": ("int", 100),
        "n_restarts": ("int", 1),
        "n_target_classes": ("int", 9),
        "rho": ("float", 0.75),
    },
    **{
        name: {
            "eps": ("float", 8 / 255),
            "norm": (NORM, "linf"),
            "steps": ("int", 200),
            "restarts": ("int", 5),
            "queries": ("int", 5000),
            "aa_steps": ("int", 100),
            "eps_factors": ("str", "1/4,1/2,2,4"),
            "sweep_steps": ("str", "10,25,50,100"),
        }
        for name in ("audit", "audit-rand")
    },
    **{
        name: {"eps": ("float", 8 / 255), "norm": (NORM, "linf")}
        for name in ("autoattack", "autoattack-fast", "autoattack-plus", "autoattack-rand")
    },
    "blur": {"sigma": ("float", 1.0)},
    "caption_decoder_pgd": GOAL_PARAMS | {"steps": ("int", 50), "restarts": ("int", 1), "margin": ("float", 5.0)},
    "caption_feature_pgd": GOAL_PARAMS
    | {
        "steps": ("int", 50),
        "restarts": ("int", 1),
        "objective": ("str", "features"),
        "n_targets": ("int | None", None),
        "scan": ("int", 2000),
    },
    "caption_gan": GOAL_PARAMS
    | {
        "steps": ("int", 600),
        "batch_size": ("int", 32),
        "lr": ("float", 1e-2),
        "adv_weight": ("float", 0.01),
        "pert_weight": ("float", 0.0),
        "pert_bound": ("float", 0.3),
        "objective": ("str", "features"),
        "margin": ("float", 5.0),
        "n_targets": ("int | None", None),
        "scan": ("int", 2000),
        "goals": ("str | None", None),
    },
    "caption_noise": GOAL_PARAMS,
    "cw": {
        "c": ("float", 1.0),
        "kappa": ("float", 0.0),
        "steps": ("int", 100),
        "lr": ("float", 0.01),
        "eps": ("float | None", None),
    },
    "deepfool": {"steps": ("int", 50), "overshoot": ("float", 0.02), "eps": ("float | None", None)},
    "fgsm": {"eps": ("float", 8 / 255)},
    "fooling": {
        "encoding": ("str", "cppn"),
        "generations": ("int | None", None),
        "population": ("int", 64),
        "init_size": ("int | None", None),
        "image_size": ("int | None", None),
        "ten_crop": ("bool | None", None),
        "coord_mode": ("str", "unit"),
        "color": ("str", "hls"),
        "max_hidden": ("int", 32),
        "halve_every": ("int", 1000),
        "objective": ("str", "softmax"),
        "decay": ("float", 0.0),
        "blur_radius": ("float", 0.0),
        "blur_every": ("int", 1),
        "checkpoint_every": ("int", 10),
        "batch_size": ("int", 256),
    },
    "noise": {"eps": ("float", 10 / 255), "load": ("str | None", None)},
    "none": {},
    **{
        name: {
            "eps": ("float", eps),
            "step_size": ("float | None", None),
            "steps": ("int", 10),
            "random_start": ("bool", True),
        }
        for name, eps in (("pgd", 8 / 255), ("pgdl2", 0.5))
    },
    "square": {
        "eps": ("float", 8 / 255),
        "norm": (NORM, "linf"),
        "n_queries": ("int", 5000),
        "n_restarts": ("int", 1),
        "p_init": ("float", 0.8),
        "rescale_schedule": ("bool", True),
    },
    "uap": {
        "eps": ("float", 10 / 255),
        "epochs": ("int", 5),
        "n_fit": ("int", 2048),
        "batch_size": ("int", 128),
        "step_size": ("float | None", None),
        "clip": ("float", 9.0),
        "load": ("str | None", None),
    },
}


def test_every_registered_attack_is_pinned() -> None:
    assert {name for name, *_ in CASES} == set(ATTACKS.names()) == set(PARAMS)


@pytest.mark.parametrize(("name", "arguments", "config", "threat"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_config_and_threat(name: str, arguments: dict[str, Any], config: dict[str, Any], threat: str) -> None:
    attack = ATTACKS.get(name).factory(**arguments)
    got = attack.config()
    assert got == config
    assert list(got) == list(config), "the keys' order (a report's attack_config) changed"
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in config.items()}
    assert attack.threat.describe() == threat


def _spelled(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_keyword_parameters(name: str) -> None:
    entry = ATTACKS.get(name)
    params = entry.params()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    hints = typing.get_type_hints(entry.factory.__init__)
    got = {
        key: (_spelled(hints[key]), p.default.value if isinstance(p.default, enum.Enum) else p.default)
        for key, p in params.items()
    }
    assert got == PARAMS[name]


def test_an_attack_that_writes_its_own_init_is_refused_when_it_is_defined() -> None:
    """config() reads the dataclass fields: hyperparameters set in a hand-written ``__init__`` would be missing from
    reports and cache keys (two budgets, one run), so such a class fails at its definition, not silently later."""
    from robustlab.attack import Attack

    with pytest.raises(TypeError, match="declare its hyperparameters as the fields of a"):

        class HandWritten(Attack):
            def __init__(self, *, eps: float = 0.1) -> None:
                self.eps = eps
