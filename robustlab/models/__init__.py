"""Models: what a loaded classifier is and how robustlab loads one by name.

:mod:`~robustlab.models.classifier` holds :class:`~robustlab.models.classifier.ImageClassifier` (which owns
normalization) and the architecture registry; :mod:`~robustlab.models.loading` loads weights by name
(torchvision, the embedded nets trained on the synthetic world, ``timm:``, ``robustbench:``, user factories);
:mod:`~robustlab.models.nets` holds the embedded architectures; :mod:`~robustlab.models.timm` and
:mod:`~robustlab.models.robustbench` the two zoos; :mod:`~robustlab.models.checkpoints` reads state dicts without
unpickling code. Importing this package imports nothing (the CLI reads :mod:`~robustlab.models.hub_cache`
without torch).
"""
