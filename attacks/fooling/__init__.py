"""Fooling images (Nguyen et al., CVPR 2015): images no human would recognise that a classifier labels confidently.

:mod:`~robustlab.attacks.fooling.attack` is the attack; it evolves images in one of two encodings
(:mod:`~robustlab.attacks.fooling.direct` pixels, :mod:`~robustlab.attacks.fooling.cppn` networks) with
:mod:`~robustlab.attacks.fooling.map_elites` and the operators of :mod:`~robustlab.attacks.fooling.evolution`, or
climbs the gradient (:mod:`~robustlab.attacks.fooling.gradient`); :mod:`~robustlab.attacks.fooling.outputs` writes
what ``robustlab fool`` shows. Importing this package registers the attack.
"""

from robustlab.attacks.fooling import attack  # noqa: F401
