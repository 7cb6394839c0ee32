"""learner and monitors are leaves: neither imports streaming nor the other.

Checked twice: statically, over the import statements of every source file of the package
(so an import inside a function counts too), and dynamically, by importing every module of the
package in a fresh interpreter and looking at what ended up in ``sys.modules`` (so an import
made some other way, ``importlib`` or a re-export, counts as well).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEAVES = {"learner": ("streaming", "monitors"), "monitors": ("streaming", "learner")}


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_no_source_file_of_a_leaf_imports_the_forbidden_packages(leaf):
    package_dir = Path(importlib.import_module(leaf).__file__).parent
    files = sorted(package_dir.rglob("*.py"))
    assert len(files) > 3, f"too few files found under {package_dir}"
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        for name in _imported_names(node)
        if name.split(".")[0] in LEAVES[leaf]
    ]
    assert offenders == []


_IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_importing_every_module_of_a_leaf_loads_none_of_the_forbidden_packages(leaf):
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, leaf],
        cwd=ROOT,  # the forbidden packages are importable from here, so an import would work
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["imported"]) > 3, report["imported"]
    forbidden = LEAVES[leaf]
    loaded = [m for m in report["loaded"] if m.split(".")[0] in forbidden]
    assert loaded == [], f"importing {leaf}'s modules loaded {loaded}"
