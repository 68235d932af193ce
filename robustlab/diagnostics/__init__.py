"""Diagnostics: whether a run's numbers can be trusted, reported beside them on any model.

:mod:`~robustlab.diagnostics.target` is the pass over one evaluated target; it runs the sanity gate
(:mod:`~robustlab.diagnostics.sanity`: numbers no working model gives), the gradient-masking probes
(:mod:`~robustlab.diagnostics.masking`) and the convergence checks (:mod:`~robustlab.diagnostics.convergence`:
would a stronger attack have moved the number?). Importing this package imports nothing.
"""
