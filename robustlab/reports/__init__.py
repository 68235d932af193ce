"""Reports: the versioned JSON document of a run and everything read from it.

:mod:`~robustlab.reports.report` holds the document (rows, diagnostics, config, environment) and its console
table; :mod:`~robustlab.reports.check` the shape a report file must have before it is read;
:mod:`~robustlab.reports.gate` the comparison with a baseline that a CI job runs; :mod:`~robustlab.reports.tables`,
:mod:`~robustlab.reports.html`, :mod:`~robustlab.reports.plots`, :mod:`~robustlab.reports.caption_plots` and
:mod:`~robustlab.reports.exports` its other renderings. Importing this package imports nothing.
"""
