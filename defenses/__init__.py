"""Defenses, imported as ``robustlab.defenses``; importing this package registers every built-in defense.

Adding a defense: one module here with a ``@DEFENSES.register(...)`` class, one import line below,
one test file under ``tests/defenses``.
"""

from robustlab.defenses import context_fusion, nmtune, none, quantize, raw_isp  # noqa: F401

from robustlab.defense import DEFENSES

__all__ = ["DEFENSES"]
