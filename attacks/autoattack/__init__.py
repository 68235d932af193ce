"""AutoAttack (Croce & Hein, ICML 2020) on robustlab's own loops: the ensemble and its parts.

:mod:`~robustlab.attacks.autoattack.ensemble` runs the standard and rand versions,
:mod:`~robustlab.attacks.autoattack.fast` the fast variant; each part is also an attack of its own: APGD
(:mod:`~robustlab.attacks.autoattack.apgd`, on the row loop of ``_apgd``), APGD-T (``apgdt``), FAB-T (the loop in
``_fab``, run by the ensemble) and Square (``square``, the search in ``_square``). Importing this package registers
them.
"""

from robustlab.attacks.autoattack import apgd, apgdt, ensemble, fast, square  # noqa: F401
