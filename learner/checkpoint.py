"""Checkpoints of a :class:`~learner.step.Learner`: safetensors + JSON, atomic, checksummed.

A checkpoint is a directory ``ckpt-<step:012d>`` holding

==========================  ===============================================================
``weights.safetensors``     the candidate's trainable weights, by parameter name
``optimizer.safetensors``   AdamW's state tensors (moments, step counts), ``<index>.<key>``
``optimizer.json``          AdamW's param groups and the parameter name of each index
``regularizers.safetensors`` the EWC Fisher estimate, for LoRA the anchors, and with weight
                            averaging the average (``fisher/``, ``anchor/``, ``average/`` +
                            parameter name)
``rng.safetensors``         torch's CPU and CUDA generator states
``state.json``              step and skip counts, schedule/boost state, Python and NumPy RNG,
                            the objective's own state (``objective_state``: e.g. the reward
                            objective's running means; absent in older checkpoints)
``extra.json``              the caller's JSON dict (Kafka offsets, monitor state)
``manifest.json``           format, step, time, and the sha256 of every other file
==========================  ===============================================================

Nothing is pickled and nothing is unpickled: tensors go through safetensors, the rest through
JSON. A save writes into a temporary directory beside the checkpoints, fsyncs every file and
the directory, renames it into place and fsyncs the parent, then keeps the newest ``keep``.
A load verifies every checksum and parses every file before it touches the learner; a corrupt
checkpoint is logged and the next older one is tried. The baseline is not saved: it is the
model the learner was built from (the live version in the model store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from learner.durable import fsync_dir, write_durably
from learner.step import Learner

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{12})$")
_FILES = (
    "weights.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "regularizers.safetensors",
    "rng.safetensors",
    "state.json",
    "extra.json",
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: all are corrupt, or they do not fit this learner."""

    retriable = False


class _Corrupt(CheckpointError):
    """One checkpoint failed verification (missing file, bad checksum, unparsable)."""


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """What :meth:`CheckpointManager.load_latest` restored.

    Attributes:
        step: the learner's step count at the checkpoint.
        extra: the caller's dict saved with it.
        path: the checkpoint directory used.
        fell_back_from: newer checkpoints that were corrupt and skipped, newest first.
        problems: why each of those was skipped.
    """

    step: int
    extra: dict[str, Any]
    path: Path
    fell_back_from: tuple[Path, ...] = ()
    problems: tuple[str, ...] = field(default=())


class CheckpointManager:
    """Saves and restores learner checkpoints in one directory, keeping the newest ``keep``.

    Args:
        directory: where ``ckpt-*`` directories live (created on first save).
        keep: how many checkpoints to keep (>= 1; keep 2 or more to survive a corrupt one).

    Example:
        >>> manager = CheckpointManager("ckpts", keep=3)  # doctest: +SKIP
        >>> manager.save(learner, extra={"offsets": {"feedback:0": 1042}})  # doctest: +SKIP
        PosixPath('ckpts/ckpt-000000000042')
        >>> manager.load_latest(fresh_learner).extra["offsets"]  # doctest: +SKIP
        {'feedback:0': 1042}
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def checkpoints(self) -> list[Path]:
        """Checkpoint directories, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    # -- save -----------------------------------------------------------------------------------
    def save(self, learner: Learner, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint of ``learner`` (and ``extra``) atomically; return its path."""
        try:
            extra_json = json.dumps(extra or {}, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint extra must be JSON-serializable: {exc}") from exc
        files = _serialize(learner)
        files["extra.json"] = extra_json
        manifest = {
            "format": FORMAT,
            "step": learner.steps,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        files["manifest.json"] = _json(manifest)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"ckpt-{learner.steps:012d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=self.directory))
        old: Path | None = None
        try:
            for name, data in files.items():
                write_durably(tmp / name, data)
            fsync_dir(tmp)
            if final.exists():  # same step saved again (e.g. only skipped steps since)
                old = self.directory / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
            os.rename(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not final.exists():
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._prune()
        return final

    def _prune(self) -> None:
        for path in self.checkpoints()[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".tmp-ckpt-*"):  # from a crash mid-save
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)

    # -- load -----------------------------------------------------------------------------------
    def latest_extra(self) -> tuple[Path, int, dict[str, Any]] | None:
        """``(path, step, extra)`` of the newest intact checkpoint, without loading a model.

        What a restart would resume from: corrupt checkpoints are skipped as in
        :meth:`load_latest`. None when there is no intact checkpoint.
        """
        for path in reversed(self.checkpoints()):
            try:
                parsed = _read(path)
            except _Corrupt:
                continue
            return path, int(parsed["state"]["step"]), parsed["extra"]
        return None

    def load_latest(self, learner: Learner) -> LoadedCheckpoint | None:
        """Restore the newest intact checkpoint into ``learner`` in place.

        Returns None when there is no checkpoint. A corrupt checkpoint is logged as a warning
        and the next older one is tried; which were skipped, and why, is in the result.

        Raises:
            CheckpointError: every checkpoint is corrupt, or the newest intact one does not
                fit ``learner`` (other trainable parameters: a different model or mode).
        """
        skipped: list[Path] = []
        problems: list[str] = []
        for path in reversed(self.checkpoints()):
            try:
                parsed = _read(path)
            except _Corrupt as exc:
                log.warning(
                    "checkpoint %s is corrupt (%s); falling back to the previous one", path, exc
                )
                skipped.append(path)
                problems.append(str(exc))
                continue
            _restore(learner, parsed, path)
            return LoadedCheckpoint(
                step=int(parsed["state"]["step"]),
                extra=parsed["extra"],
                path=path,
                fell_back_from=tuple(skipped),
                problems=tuple(problems),
            )
        if skipped:
            raise CheckpointError(
                f"all {len(skipped)} checkpoints in {self.directory} are corrupt: "
                + "; ".join(f"{p.name}: {why}" for p, why in zip(skipped, problems, strict=True))
            )
        return None


# -- serialization ---------------------------------------------------------------------------
def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, indent=1, allow_nan=True).encode()


def _tensors(values: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in values.items()})


def _serialize(learner: Learner) -> dict[str, bytes]:
    names = dict(zip(map(id, learner.params), learner.param_names, strict=True))
    opt = learner.optimizer.state_dict()
    index_names = [names[id(p)] for g in learner.optimizer.param_groups for p in g["params"]]
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                opt_tensors[f"{index}.{key}"] = value
            else:
                opt_scalars.setdefault(str(index), {})[key] = value
    regular: dict[str, torch.Tensor] = {}
    if learner.ewc.enabled:
        pairs = zip(learner.param_names, learner.ewc.fisher, strict=True)
        regular.update({f"fisher/{n}": f for n, f in pairs})
    if learner.owns_anchors:
        regular.update(
            {f"anchor/{n}": a for n, a in zip(learner.param_names, learner.anchors, strict=True)}
        )
    if learner.average_params:
        regular.update(
            {
                f"average/{n}": a
                for n, a in zip(learner.param_names, learner.average_params, strict=True)
            }
        )
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state: dict[str, Any] = np.random.get_state(legacy=False)
    py_state = random.getstate()
    state = {
        "format": FORMAT,
        "step": learner.steps,
        "skipped": learner.skipped,
        "schedule": learner.schedule.state(),
        "trainable": learner.config.trainable,
        "objective": learner.objective.name,
        "objective_state": learner.objective.state_dict(),
        "param_names": learner.param_names,
        "rng": {
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": {
                **np_state,
                "state": {
                    "key": np_state["state"]["key"].tolist(),
                    "pos": np_state["state"]["pos"],
                },
            },
        },
    }
    return {
        "weights.safetensors": _tensors(
            dict(zip(learner.param_names, learner.params, strict=True))
        ),
        "optimizer.safetensors": _tensors(opt_tensors),
        "optimizer.json": _json(
            {"param_groups": opt["param_groups"], "scalars": opt_scalars, "names": index_names}
        ),
        "regularizers.safetensors": _tensors(regular),
        "rng.safetensors": _tensors(rng),
        "state.json": _json(state),
    }


# -- verification and restore ------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    """Read, verify and parse one checkpoint without touching any learner."""
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
        expected = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Corrupt(f"unreadable manifest.json: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise _Corrupt(f"format {manifest.get('format')!r}, expected {FORMAT}")
    missing = [name for name in _FILES if name not in expected]
    if missing:
        raise _Corrupt(f"manifest lists no {', '.join(missing)}")
    raw: dict[str, bytes] = {}
    for name in _FILES:
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise _Corrupt(f"{name}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != expected[name]:
            raise _Corrupt(f"{name}: sha256 mismatch")
        raw[name] = data
    try:
        return {
            "weights": st_load(raw["weights.safetensors"]),
            "optimizer": st_load(raw["optimizer.safetensors"]),
            "optimizer_meta": json.loads(raw["optimizer.json"]),
            "regularizers": st_load(raw["regularizers.safetensors"]),
            "rng": st_load(raw["rng.safetensors"]),
            "state": json.loads(raw["state.json"]),
            "extra": json.loads(raw["extra.json"]),
        }
    except Exception as exc:  # a checksummed file that still does not parse
        raise _Corrupt(f"unparsable content: {exc}") from exc


def _restore(learner: Learner, parsed: dict[str, Any], path: Path) -> None:
    """Check that ``parsed`` fits ``learner``, then copy it in (all checks come first)."""
    state, weights = parsed["state"], parsed["weights"]
    meta = parsed["optimizer_meta"]
    names = dict(zip(map(id, learner.params), learner.param_names, strict=True))
    index_names = [names[id(p)] for g in learner.optimizer.param_groups for p in g["params"]]
    if state["param_names"] != learner.param_names or meta["names"] != index_names:
        raise CheckpointError(
            f"{path} holds other trainable parameters than this learner "
            f"(trainable={state['trainable']!r} vs {learner.config.trainable!r}, "
            f"{len(state['param_names'])} vs {len(learner.param_names)} tensors); "
            "it was written for a different model or trainable mode"
        )
    for name, param in zip(learner.param_names, learner.params, strict=True):
        if tuple(weights[name].shape) != tuple(param.shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(weights[name].shape)}, "
                f"the learner's is {tuple(param.shape)}"
            )
    try:  # the objective checks its state before it takes it, so nothing is changed yet
        learner.objective.load_state_dict(state.get("objective_state") or {})
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in parsed["optimizer"].items():
        index, _, name = key.partition(".")
        optimizer_state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(scalars)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    regular = parsed["regularizers"]
    with torch.no_grad():
        for name, param in zip(learner.param_names, learner.params, strict=True):
            param.copy_(weights[name])
        learner.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
        if learner.ewc.enabled:
            for name, fisher in zip(learner.param_names, learner.ewc.fisher, strict=True):
                saved = regular.get(f"fisher/{name}")
                if saved is None:  # EWC was off when the checkpoint was written
                    fisher.zero_()
                else:
                    fisher.copy_(saved)
        if learner.owns_anchors:
            for name, anchor in zip(learner.param_names, learner.anchors, strict=True):
                anchor.copy_(regular[f"anchor/{name}"])
        if learner.average_params:  # turned on since the checkpoint: start at the weights
            for name, average, param in zip(
                learner.param_names, learner.average_params, learner.params, strict=True
            ):
                average.copy_(regular.get(f"average/{name}", param))
    learner.steps = int(state["step"])
    learner._distance = None  # weights changed under the same step count
    learner.skipped = int(state["skipped"])
    learner.schedule.load(state["schedule"])
    _restore_rng(parsed["rng"], state["rng"])


def _restore_rng(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    n = saved["numpy"]
    key = np.asarray(n["state"]["key"], dtype=np.uint32)
    np.random.set_state({**n, "state": {"key": key, "pos": n["state"]["pos"]}})
