"""robustlab: how robust is this model, behind this defense, against these attacks?

Every public tensor is float ``(B, C, H, W)`` in ``[0, 1]``; normalization lives only inside
:class:`robustlab.models.classifier.ImageClassifier`. Importing this package does no work: registries fill
when :mod:`robustlab.attacks`, :mod:`robustlab.defenses` or :mod:`robustlab.models.classifier` are imported.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
