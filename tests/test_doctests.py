"""The docstring examples of every module of streaming, learner and monitors run and pass.

One test per module, found by walking the packages, so a new module is covered without being
listed. Every module must import here: an example that needs an optional dependency is not a
reason to leave its module out.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import learner
import monitors
import streaming

PACKAGES = (streaming, learner, monitors)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(names)


MODULES = _modules()


def test_every_package_is_walked():
    assert {"streaming.runtime.pipeline", "learner.objectives.reward", "monitors.gate"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} example(s) failed in {name}"
