"""The examples in the docstrings of attacks/ and defenses/ run as tests.

pytest's ``--doctest-modules`` would import those files a second time under another module name (they
install as ``robustlab.attacks`` and ``robustlab.defenses``), registering every component twice; so
the doctests are collected here from the modules as the package imports them.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import robustlab.attacks
import robustlab.defenses


def _examples() -> list[doctest.DocTest]:
    tests = []
    for package in (robustlab.attacks, robustlab.defenses):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            tests += [test for test in doctest.DocTestFinder().find(module) if test.examples]
    return tests


EXAMPLES = _examples()


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda test: test.name)
def test_docstring_example(example: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(example, out=report.append)
    assert result.failed == 0, "".join(report)
