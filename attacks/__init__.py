"""Attacks, imported as ``robustlab.attacks``; importing this package registers every built-in attack.

Adding an attack: one module here with an ``@ATTACKS.register(...)`` class, one import line below,
one test file under ``tests/attacks``. An attack made of several modules is a sub-package whose
``__init__`` imports its registering modules: ``autoattack/`` (the ensemble, its fast variant and its
parts APGD, APGD-T, FAB-T and Square, each usable alone) and ``fooling/`` (the attack, its two image
encodings, MAP-Elites and gradient ascent).
"""

from robustlab.attacks import (  # noqa: F401
    advencoder,
    audit,
    autoattack,
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
    uap,
)

from robustlab.attack import ATTACKS

__all__ = ["ATTACKS"]
