"""The versioned model store: immutable versions, an atomic ``LIVE`` pointer, an audit trail.

A store is a plain directory (default ``./feedstep-store``) that the chat service reads::

    LIVE               the live version number on one line, replaced atomically
    history.jsonl      one JSON line per switch of LIVE (promote, manual, rollback); append-only
    store.lock         an fcntl lock held around every change
    versions/<n>/      one version, never modified once written:
        manifest.json  version, parent, created_at, kind, objective, metrics, reason, files+sha256
        ...            the model in a layout its loader reads directly (see below)
    staging/           versions being written; each is renamed into versions/ when complete

Model layouts (the manifest's ``model_type``):

* ``reward_model``: :func:`learner.models.save_reward_model` -- ``encoder/`` (``save_pretrained``
  of the encoder and its tokenizer), ``head.safetensors`` and ``reward_model.json``; load it with
  :func:`learner.models.load_reward_model` or with plain ``transformers`` + ``safetensors``.
* ``pretrained``: any Hugging Face model (a causal LM) -- ``model/`` holds ``save_pretrained`` of
  the model and of its tokenizer; ``AutoModelForCausalLM.from_pretrained(versions/<n>/model)``.

The manifest's ``kind`` says how the weights are stored:

* ``full``: every weight, in the layout above.
* ``lora``: a LoRA adapter (``trainable = "lora"``) -- ``adapter/adapter_config.json`` and
  ``adapter/adapter_model.safetensors`` (peft's layout: ``PeftModel.from_pretrained(base,
  versions/<n>/adapter)``, vLLM's ``/v1/load_lora_adapter``), ``tokenizer/``; the manifest's
  ``base`` names the base model (``name``, ``seed``) with ``sha256``, the digest of its weights
  (:func:`learner.lora.tensor_digest`), and ``model_type`` is the base's.

``merged`` is reserved; readers must refuse a kind they do not know.

Safety: a version is written under ``staging/``, fsynced, and renamed into ``versions/<n>`` only
when complete; ``n`` is allocated while holding the lock, so concurrent publishers never share a
number. ``LIVE`` is replaced by write-temp, fsync, ``os.replace``, fsync of the directory. A switch
is appended to the history (fsynced) before ``LIVE`` moves; if a crash falls between the two, the
next change completes the switch the history recorded. Only JSON and safetensors are written;
nothing is ever pickled.

Example:
    >>> store = ModelStore("feedstep-store")  # doctest: +SKIP
    >>> info = store.publish(model, tokenizer, objective="reward", metrics={"loss": 0.41},
    ...                      reason="gate passed")  # doctest: +SKIP
    >>> store.promote(info.version, reason="gate passed", actor="gate")  # doctest: +SKIP
    >>> store.rollback(reason="error rate up", actor="rollback-watch")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from learner.durable import fsync_dir, write_durably

log = logging.getLogger(__name__)

DEFAULT_STORE = "./feedstep-store"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "feedstep/version"
MANIFEST_FORMAT_VERSION = 1
KINDS = ("full", "lora", "merged")
ACTIONS = ("promote", "manual", "rollback")
Action = Literal["promote", "manual", "rollback"]
_CHUNK = 1 << 20
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# -- errors -----------------------------------------------------------------------------------
class StoreError(Exception):
    """Root of the model store's errors; the message says what to do."""

    retriable = False


class VersionNotFound(StoreError):
    """The asked-for version does not exist in the store."""


class NothingToRollBack(StoreError):
    """No version was live before the current one, so there is nothing to go back to."""


class CorruptVersion(StoreError):
    """A version's files do not match the sha256 sums in its manifest."""


class StoreLocked(StoreError):
    """Another process held the store's lock for longer than the timeout; try again."""

    retriable = True


# -- values -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version: path relative to the version folder, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a version's manifest says, plus where the version lives.

    Attributes:
        version: the version number (``versions/<version>``).
        parent: the version this one was trained from, if known.
        created_at: RFC 3339 UTC time the version was published.
        kind: ``full`` (all weights) or ``lora`` (an adapter over ``base``).
        model_type: ``reward_model`` or ``pretrained``; tells which loader reads it.
        objective: the objective that trained it (``reward``, ``kto``, ``dpo``, ``sft``).
        metrics: the numbers that justified publishing it (read-only by convention).
        reason: why it was published, in words.
        files: every file of the version with its size and sha256.
        path: the version folder.
        base: for ``lora``, the base model: ``name``, ``seed``, ``sha256`` (the digest of its
            weights), ``digest``; otherwise ``None``.
    """

    version: int
    parent: int | None
    created_at: str
    kind: str
    model_type: str
    objective: str
    metrics: dict[str, Any]
    reason: str
    files: tuple[FileEntry, ...]
    path: Path
    base: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Switch:
    """One change of ``LIVE``, as recorded in ``history.jsonl``.

    ``from_version`` is ``None`` when nothing was live before.
    """

    seq: int
    action: str
    from_version: int | None
    to_version: int
    at: str
    reason: str
    actor: str

    def to_json(self) -> dict[str, Any]:
        """The history line's fields (``from``/``to`` as in the file)."""
        return {
            "seq": self.seq,
            "action": self.action,
            "from": self.from_version,
            "to": self.to_version,
            "at": self.at,
            "reason": self.reason,
            "actor": self.actor,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of checking a version's files against its manifest; ``problems`` name each file."""

    version: int
    ok: bool
    problems: tuple[str, ...]


# -- the store --------------------------------------------------------------------------------
class ModelStore:
    """A directory of immutable model versions with an atomically switched ``LIVE`` pointer.

    Args:
        root: the store directory.
        create: create the directory when missing; with ``False`` a missing store is an error
            (the read-and-switch CLI verbs use that, so a typo does not make an empty store).
        lock_timeout_s: how long a change waits for another process's change to finish.

    Example:
        >>> store = ModelStore(tmp_path / "store")  # doctest: +SKIP
        >>> store.live() is None  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_STORE,
        *,
        create: bool = True,
        lock_timeout_s: float = 60.0,
    ) -> None:
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s
        if not self.root.is_dir():
            if not create:
                raise StoreError(
                    f"no model store at {str(self.root)!r}; pass --store DIR pointing at an "
                    "existing store (the default is ./feedstep-store)"
                )
            self.root.mkdir(parents=True, exist_ok=True)
        if create:
            self._versions_dir.mkdir(exist_ok=True)

    # -- paths ------------------------------------------------------------------------------------
    @property
    def _versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def _live_path(self) -> Path:
        return self.root / "LIVE"

    @property
    def _history_path(self) -> Path:
        return self.root / "history.jsonl"

    def path(self, version: int) -> Path:
        """The folder of ``version`` (whether or not it exists)."""
        return self._versions_dir / str(int(version))

    # -- reading ----------------------------------------------------------------------------------
    def live_version(self) -> int | None:
        """The number in ``LIVE``, or ``None`` when nothing has been promoted yet."""
        try:
            text = self._live_path.read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            raise StoreError(
                f"{str(self._live_path)!r} holds {text[:40]!r}, not a version number; "
                "fix it with `feedstep promote --version N`"
            ) from None

    def live(self) -> VersionInfo | None:
        """The live version, or ``None`` when nothing has been promoted yet."""
        number = self.live_version()
        return None if number is None else self.version(number)

    def version(self, version: int) -> VersionInfo:
        """The manifest of ``version``; :class:`VersionNotFound` names the versions there are."""
        folder = self.path(version)
        if not (folder / MANIFEST).is_file():
            known = ", ".join(str(n) for n in self._numbers()) or "none"
            raise VersionNotFound(
                f"version {version} does not exist in the store {str(self.root)!r} "
                f"(versions: {known}); see `feedstep status`"
            )
        return _read_manifest(folder)

    def versions(self) -> list[VersionInfo]:
        """Every complete version, oldest first."""
        return [_read_manifest(self.path(n)) for n in self._numbers()]

    def history(self) -> list[Switch]:
        """Every switch of ``LIVE``, oldest first."""
        try:
            raw = self._history_path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        if torn.strip():  # a crash mid-append: never fsynced, so the switch never happened
            log.warning("ignoring an incomplete last line in %s", self._history_path)
        switches: list[Switch] = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                switches.append(
                    Switch(
                        seq=int(obj["seq"]),
                        action=str(obj["action"]),
                        from_version=None if obj["from"] is None else int(obj["from"]),
                        to_version=int(obj["to"]),
                        at=str(obj["at"]),
                        reason=str(obj["reason"]),
                        actor=str(obj["actor"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(
                    f"line {number} of {str(self._history_path)!r} is not a switch record "
                    f"({exc}); the audit history was edited by hand - restore it from backup"
                ) from exc
        return switches

    def verify(self, version: int) -> VerifyReport:
        """Check every file of ``version`` against the sizes and sha256 sums in its manifest."""
        folder = self.path(version)
        if not folder.is_dir():
            self.version(version)  # raises VersionNotFound with the list of versions
        try:
            info = _read_manifest(folder)
        except StoreError as exc:
            return VerifyReport(version, False, (str(exc),))
        problems: list[str] = []
        if info.version != version:
            problems.append(f"{MANIFEST}: says version {info.version}, folder is {version}")
        listed = {f.path: f for f in info.files}
        present = set(_relative_files(folder)) - {MANIFEST}
        for name in sorted(listed.keys() - present):
            problems.append(f"{name}: missing")
        for name in sorted(present - listed.keys()):
            problems.append(f"{name}: not in the manifest")
        for name in sorted(listed.keys() & present):
            want = listed[name]
            size = (folder / name).stat().st_size
            if size != want.bytes:
                problems.append(f"{name}: {size} bytes, manifest says {want.bytes}")
                continue
            digest = _sha256(folder / name)
            if digest != want.sha256:
                problems.append(
                    f"{name}: sha256 {digest[:12]}... does not match the manifest's "
                    f"{want.sha256[:12]}..."
                )
        return VerifyReport(version, not problems, tuple(problems))

    # -- writing ----------------------------------------------------------------------------------
    def publish(
        self,
        model: Any,
        tokenizer: Any,
        *,
        objective: str,
        metrics: Mapping[str, Any],
        reason: str,
        parent: int | None = None,
    ) -> VersionInfo:
        """Write ``model`` and ``tokenizer`` as a new version; ``LIVE`` does not move.

        Args:
            model: a :class:`learner.models.RewardModel`, a Hugging Face model, or a
                :class:`learner.lora.Adapter` (written as kind ``lora``); a learner's
                :meth:`~learner.step.Learner.publishable` gives the right one.
            tokenizer: its tokenizer (saved beside the weights).
            objective: the objective that trained it.
            metrics: JSON numbers/strings recorded in the manifest (finite floats only).
            reason: why it is published.
            parent: the version it was trained from, if any (must exist).

        Returns:
            The new version's manifest.
        """
        _check_text("objective", objective)
        _check_text("reason", reason)
        metrics = _check_metrics(metrics)
        staging = self.root / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        try:
            model_type, kind, base = _write_model(model, tokenizer, staging)
            files = _seal(staging)
            with self._locked():
                if parent is not None:
                    self.version(parent)  # raises VersionNotFound
                number = self._next_number()
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "format_version": MANIFEST_FORMAT_VERSION,
                    "version": number,
                    "parent": parent,
                    "created_at": _now(),
                    "kind": kind,
                    "base": base,
                    "model_type": model_type,
                    "objective": objective,
                    "metrics": metrics,
                    "reason": reason,
                    "files": [dataclasses.asdict(f) for f in files],
                }
                _write_durably(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
                fsync_dir(staging)
                os.rename(staging, self.path(number))
                fsync_dir(self._versions_dir)
                fsync_dir(staging.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("published version %d (%s, %s): %s", number, model_type, objective, reason)
        return _read_manifest(self.path(number))

    def promote(self, version: int, reason: str, actor: str, *, manual: bool = False) -> Switch:
        """Make ``version`` live. ``manual=True`` records an operator's switch as ``manual``.

        The version's checksums are verified first; a corrupt version is never made live.
        """
        _check_text("reason", reason)
        _check_text("actor", actor)
        with self._locked():
            current = self._settle()
            self.version(version)
            if current == version:
                raise StoreError(
                    f"version {version} is already LIVE; nothing to promote (see `feedstep status`)"
                )
            self._require_sound(version, "promote")
            return self._switch("manual" if manual else "promote", current, version, reason, actor)

    def rollback_target(self) -> int | None:
        """The version :meth:`rollback` would put back now, or None when there is none."""
        with self._locked():
            self._settle()
            return _rollback_target(self.history())

    def rollback(self, reason: str, actor: str) -> Switch:
        """Put back the version that was live before the last promotion not yet rolled back.

        Rollbacks nest: after promotions 1 → 2 → 3, two rollbacks lead to 2, then 1.
        """
        _check_text("reason", reason)
        _check_text("actor", actor)
        with self._locked():
            current = self._settle()
            if current is None:
                raise NothingToRollBack(
                    f"the store {str(self.root)!r} has no LIVE version, so there is nothing to "
                    "roll back; make one live with `feedstep promote --version N`"
                )
            target = _rollback_target(self.history())
            if target is None:
                raise NothingToRollBack(
                    f"nothing to roll back to: version {current} is LIVE and no earlier version "
                    "was live before it; to switch to another version use "
                    "`feedstep promote --version N`"
                )
            self._require_sound(target, "roll back to")
            return self._switch("rollback", current, target, reason, actor)

    # -- internals --------------------------------------------------------------------------------
    def _numbers(self) -> list[int]:
        if not self._versions_dir.is_dir():
            return []
        found = []
        for entry in self._versions_dir.iterdir():
            if entry.name.isdigit() and (entry / MANIFEST).is_file():
                found.append(int(entry.name))
        return sorted(found)

    def _next_number(self) -> int:
        """One past every number ever used: folders (even incomplete ones) and the history."""
        self._versions_dir.mkdir(exist_ok=True)
        used = [int(e.name) for e in self._versions_dir.iterdir() if e.name.isdigit()]
        for s in self.history():
            used.append(s.to_version)
        return max(used, default=0) + 1

    def _require_sound(self, version: int, what: str) -> None:
        report = self.verify(version)
        if not report.ok:
            raise CorruptVersion(
                f"cannot {what} version {version}: its files fail the manifest check "
                f"({'; '.join(report.problems[:3])}); pick another version "
                "(`feedstep status --verify` lists the sound ones)"
            )

    def _settle(self) -> int | None:
        """``LIVE`` after completing a switch a crash interrupted (history ahead of LIVE)."""
        current = self.live_version()
        history = self.history()
        if history and history[-1].to_version != current:
            last = history[-1]
            log.warning(
                "LIVE is %s but the history's last switch (#%d) went to %d; completing it",
                current,
                last.seq,
                last.to_version,
            )
            self._write_live(last.to_version)
            current = last.to_version
        return current

    def _switch(
        self, action: Action, current: int | None, target: int, reason: str, actor: str
    ) -> Switch:
        switch = Switch(
            seq=len(self.history()) + 1,
            action=action,
            from_version=current,
            to_version=target,
            at=_now(),
            reason=reason,
            actor=actor,
        )
        self._append_history(switch)
        self._write_live(target)
        log.info("LIVE %s -> %d (%s by %s): %s", current, target, action, actor, reason)
        return switch

    def _append_history(self, switch: Switch) -> None:
        line = (json.dumps(switch.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self._history_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:  # drop a torn last line left by a crash (see history())
                tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
                if not tail.endswith(b"\n"):
                    cut = tail.rfind(b"\n")
                    if cut < 0 and len(tail) < size:
                        raise StoreError(
                            f"the last line of {str(self._history_path)!r} is over 64 KiB and "
                            "incomplete; the audit history is damaged - restore it from backup"
                        )
                    os.ftruncate(fd, size - len(tail) + cut + 1)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.root)

    def _write_live(self, version: int) -> None:
        tmp = self.root / f".LIVE.{os.getpid()}.tmp"
        _write_durably(tmp, f"{version}\n")
        os.replace(tmp, self._live_path)
        fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (``store.lock``); released even if the process dies."""
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLocked(
                            f"another process has held {str(self.root / 'store.lock')!r} for "
                            f"over {self.lock_timeout_s:g}s; try again when it has finished"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


# -- helpers ----------------------------------------------------------------------------------
def _rollback_target(history: list[Switch]) -> int | None:
    """The version to go back to: each promotion pushes what it replaced, each rollback pops."""
    replaced: list[int | None] = []
    for switch in history:
        if switch.action == "rollback":
            if replaced:
                replaced.pop()
        else:
            replaced.append(switch.from_version)
    return replaced[-1] if replaced else None


def _write_model(
    model: Any, tokenizer: Any, folder: Path
) -> tuple[str, str, dict[str, Any] | None]:
    """Save ``model`` into ``folder`` in the layout its loader reads.

    Returns the model type, the kind (``full`` or ``lora``) and the base reference (``lora``).
    """
    from learner.lora import Adapter
    from learner.models import RewardModel, save_reward_model

    if isinstance(model, Adapter):
        from safetensors.torch import save_file

        adapter = folder / ADAPTER_DIR
        adapter.mkdir()
        model.config.save_pretrained(str(adapter))
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state.items()}
        save_file(state, str(adapter / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        tokenizer.save_pretrained(folder / "tokenizer")
        return model.model_type, "lora", dict(model.base)
    if getattr(model, "peft_config", None) is not None:
        raise StoreError(
            "cannot publish a peft model as it is; publish learner.publishable() (the adapter) "
            "or merge the adapters first (model.merge_and_unload())"
        )
    if isinstance(model, RewardModel):
        save_reward_model(model, tokenizer, folder)
        return "reward_model", "full", None
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        return "pretrained", "full", None
    raise StoreError(
        f"cannot publish a {type(model).__name__}: the store writes a RewardModel, a Hugging "
        "Face model (one with save_pretrained) or a learner.lora.Adapter"
    )


def read_state(info: VersionInfo) -> dict[str, Any]:
    """The weights of a version as :meth:`learner.step.Learner.reset_to` takes them.

    A ``lora`` version gives its adapter's weights (peft's layout), a ``full`` one the whole
    model's state dict. Check :func:`check_fits` first.
    """
    if info.kind == "lora":
        from safetensors.torch import load_file

        return load_file(str(info.path / ADAPTER_DIR / ADAPTER_WEIGHTS))
    if info.model_type == "reward_model":
        from learner.models import load_reward_model

        return load_reward_model(info.path)[0].state_dict()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(info.path / "model")
    return model.state_dict()  # type: ignore[no-any-return]


def check_fits(info: VersionInfo, trainable: str, base: Mapping[str, Any] | None) -> None:
    """Raise :class:`StoreError` unless a learner (``trainable``, ``base``) can load ``info``.

    A ``lora`` version fits a LoRA learner over the same base weights (equal ``sha256``); a
    ``full`` version fits a learner that trains the whole model, its head or its biases.
    """
    if info.kind not in ("full", "lora"):
        raise StoreError(f"version {info.version} is of kind {info.kind!r}, which cannot be loaded")
    if (info.kind == "lora") != (trainable == "lora"):
        raise StoreError(
            f"version {info.version} is of kind {info.kind!r} but the learner trains "
            f"trainable={trainable!r}; set step.trainable = "
            f"{'lora' if info.kind == 'lora' else 'full, head or bias'} or use another --store"
        )
    if info.kind == "lora":
        mine = (base or {}).get("sha256")
        theirs = (info.base or {}).get("sha256")
        if mine is None or mine != theirs:
            named = info.base or {}
            raise StoreError(
                f"version {info.version} is an adapter over base {named.get('name')!r} (seed "
                f"{named.get('seed')}, sha256 {str(theirs)[:12]}...) but this learner's base "
                f"weights have sha256 {str(mine)[:12]}...; start with --model "
                f"{named.get('name')!r} and learner.seed = {named.get('seed')}"
            )


def _relative_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _seal(folder: Path) -> list[FileEntry]:
    """Hash and fsync every file under ``folder``, then fsync every directory."""
    entries = []
    for name in _relative_files(folder):
        path = folder / name
        if path.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle"):
            raise StoreError(f"refusing to store {name!r}: pickle-based files are not allowed")
        entries.append(FileEntry(name, path.stat().st_size, _sha256(path, sync=True)))
    for directory in sorted({p for p in folder.rglob("*") if p.is_dir()} | {folder}):
        fsync_dir(directory)
    return entries


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _read_manifest(folder: Path) -> VersionInfo:
    path = folder / MANIFEST
    try:
        obj = json.loads(path.read_text("utf-8"))
        if obj.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is {obj.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        if obj.get("kind") not in KINDS:
            raise ValueError(f"unknown kind {obj.get('kind')!r}; this feedstep knows {KINDS}")
        return VersionInfo(
            version=int(obj["version"]),
            parent=None if obj["parent"] is None else int(obj["parent"]),
            created_at=str(obj["created_at"]),
            kind=str(obj["kind"]),
            model_type=str(obj["model_type"]),
            objective=str(obj["objective"]),
            metrics=dict(obj["metrics"]),
            reason=str(obj["reason"]),
            files=tuple(
                FileEntry(str(f["path"]), int(f["bytes"]), str(f["sha256"])) for f in obj["files"]
            ),
            path=folder,
            base=obj.get("base"),
        )
    except FileNotFoundError:
        raise StoreError(f"{str(path)!r} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{str(path)!r} is not a valid version manifest: {exc}") from exc


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{name} must be a non-empty string, got {value!r}")


def _check_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(metrics)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise StoreError(
                f"metric {key!r} is {value}; the manifest keeps finite numbers only - "
                "leave it out or record it as a string"
            )
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"metrics must be JSON numbers, strings, lists or dicts: {exc}") from exc
    return out


def _now() -> str:
    """The current UTC time in RFC 3339 with milliseconds, e.g. ``2025-05-01T12:00:00.123Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _write_durably(path: Path, text: str) -> None:
    write_durably(path, text.encode("utf-8"))
