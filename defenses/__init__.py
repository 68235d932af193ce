"""Defenses, imported as ``robustlab.defenses``; importing this package registers every built-in defense.

Adding a defense: one module here with a ``@DEFENSES.register(...)`` class, one import line below,
one test file under ``tests/defenses``. Its keyword arguments are its hyperparameters; a defense that keeps them
in a frozen dataclass (the cache key of what it trains) takes them as ``**keywords`` and names that class in
``hyperparameters`` (:class:`robustlab.defenses.nmtune.NMTune`), so each is declared once.
"""

from robustlab.defenses import context_fusion, nmtune, none, quantize, raw_isp  # noqa: F401

from robustlab.defense import DEFENSES

__all__ = ["DEFENSES"]
