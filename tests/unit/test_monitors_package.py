"""The monitors package as a whole: a leaf, and its docstring examples run."""

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import monitors

MODULES = sorted(m.name for m in pkgutil.iter_modules(monitors.__path__, "monitors."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_monitors_is_a_leaf_that_imports_neither_streaming_nor_learner():
    offenders = []
    for path in sorted(Path(monitors.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.name}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in ("streaming", "learner")
            ]
    assert offenders == []
