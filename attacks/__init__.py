"""Attacks, imported as ``robustlab.attacks``; importing this package registers every built-in attack.

Adding an attack: one module here with an ``@ATTACKS.register(...)`` class, one import line below,
one test file under ``tests/attacks``.
"""

from robustlab.attacks import (  # noqa: F401
    advencoder,
    apgd,
    apgdt,
    audit,
    autoattack,
    autoattack_fast,
    blur,
    caption_baselines,
    caption_gan,
    cw,
    deepfool,
    fgsm,
    fooling,
    none,
    pgd,
    pgdl2,
    square,
    uap,
)

from robustlab.attack import ATTACKS

__all__ = ["ATTACKS"]
