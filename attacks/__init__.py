"""Attacks, imported as ``robustlab.attacks``; importing this package registers every built-in attack.

Adding an attack: one module here with an ``@ATTACKS.register(...)`` class, one import line below,
one test file under ``tests/attacks``.
"""

from robustlab.attacks import advencoder, apgd, apgdt, autoattack, cw, deepfool, fgsm, none, pgd, pgdl2, square, uap  # noqa: F401

from robustlab.attack import ATTACKS

__all__ = ["ATTACKS"]
