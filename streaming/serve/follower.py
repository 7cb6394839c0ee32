"""The follower (``feedstep serve``): ``POST /v1/score`` from the model store's LIVE version.

One trainer (``feedstep run``) learns and publishes; N followers, one beside each chat replica,
serve what it published. They share the store (a ReadWriteMany volume, or a copy kept in sync
from an object store) and learn of a switch in two ways: a read of the store's ``LIVE`` file
every ``follow_poll_s``, and at once when a message arrives on the model-updates topic
(:class:`streaming.kafka.updates.UpdatesListener`). Either only says "look at LIVE now": the
``LIVE`` file is the truth, so a lost, late or repeated message never makes a follower serve
anything but what LIVE names.

A switch is atomic and never fails a request:

1. off the lock, on the follower's own thread: read the version's manifest (refusing a ``kind``
   other than ``full`` or ``lora`` and a model type other than ``reward_model``), check every
   file against its sha256 (:meth:`learner.store.ModelStore.verify`), load it
   (:func:`learner.models.load_reward_version`: a LoRA adapter is merged into its base, whose
   digest must match the manifest's), and score one fixed probe with it (a finite reward, or
   it is refused);
2. under the lock, replace the served version (model, objective, version number) in one go.

Requests go through the trainer's own :class:`streaming.serve.score.Scorer`, which scores under
the same lock, so every response names the version whose rewards it carries. A version that
fails any check is not switched to: the follower logs why (file names and checksums, never user
text), counts it in ``feedstep_follower_load_failures_total{reason}``, keeps serving the version
it had (readiness unchanged) and tries again with capped backoff (at once on a model-updates
message), so a copy that is still syncing is picked up when it is complete. Before any version
has been served, ``/readyz`` answers 503 with the reason and ``/v1/score`` 503 with what to do.

The follower only reads the store: it never creates, locks or writes it, so the store can be
mounted read-only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learner.base import Example
from learner.objectives import RewardObjective
from learner.store import ModelStore, StoreError, VersionInfo, VersionNotFound
from monitors.metrics import FollowerMetrics
from monitors.server import HealthState
from streaming.errors import FeedstepError
from streaming.promotion.updates import decode_update
from streaming.serve.score import Answer, ScoreLimits, Scorer

log = logging.getLogger(__name__)

__all__ = ["FollowSettings", "Follower", "VersionRefused"]

SERVED_KINDS = ("full", "lora")
SERVED_MODEL_TYPE = "reward_model"
RETRY_MAX_S = 60.0
"""A refused LIVE version is tried again after poll_s, then twice as long each time, up to this."""
_UNREADABLE_LIVE = 0  # no version has number 0: the key of "the LIVE file did not read"
_PROBE = Example("feedstep follower check", "a fixed reply to score once", target=1.0)


@dataclass(frozen=True, slots=True)
class FollowSettings:
    """How the follower follows and loads (the ``follow`` config section and the learner's).

    Attributes:
        poll_s: read ``LIVE`` this often (``follow_poll_s``).
        max_length: tokens per (prompt, response), as the trainer scores (``max_length``).
        device: where the served model runs (``device``: ``auto``, ``cpu``, ``cuda``...).
    """

    poll_s: float = 2.0
    max_length: int = 256
    device: str = "auto"


class VersionRefused(FeedstepError):
    """A LIVE version the follower will not serve; ``reason`` is the metric's label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Served:
    """One loaded version: swapped as a whole, never changed once built."""

    version: int
    objective: RewardObjective
    model: nn.Module
    device: torch.device


class Follower:
    """Serves the store's LIVE version and switches, atomically, when LIVE changes.

    It is the score handler (``server.set_score(follower, ...)``) and the
    :class:`~streaming.serve.score.LiveModel` its :class:`Scorer` scores with.

    Args:
        store: the model store's directory; it may not exist yet (the follower waits for it).
        metrics: the follower's metric set.
        health: readiness is set here: not ready until a version is served.
        settings: poll period, max_length and device.
        limits: the ``/v1/score`` request limits.
        clock: monotonic seconds (tests pass a fake one for the retry backoff).

    Example:
        >>> follower = Follower("/data/store", FollowerMetrics(), HealthState())  # doctest: +SKIP
        >>> server.set_score(follower, observe=follower.metrics.observe_score)  # doctest: +SKIP
        >>> follower.run()  # until follower.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | Path,
        metrics: FollowerMetrics,
        health: HealthState,
        settings: FollowSettings | None = None,
        limits: ScoreLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from learner.models import select_device

        self.root = Path(store)
        self.metrics = metrics
        self.health = health
        self.settings = settings or FollowSettings()
        self.lock = threading.Lock()
        self._device = select_device(self.settings.device)
        self._clock = clock
        self._served: _Served | None = None
        self._store: ModelStore | None = None
        self._refused: tuple[int, float, float] | None = None  # version, retry at, next delay
        self._said_missing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switches = 0
        """Versions switched to (the first one included)."""
        self.refusals = 0
        """LIVE versions refused, each attempt counted."""
        self.scorer = Scorer(self, self.lock, self._version_under_lock, limits)
        health.set_ready(False, f"no LIVE version served yet from the model store {self.root}")

    # -- serving (LiveModel) --------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        """The version being served, None before the first."""
        served = self._served
        return None if served is None else served.version

    @property
    def objective(self) -> RewardObjective:
        """The served version's objective (its tokenizer)."""
        return self._current().objective

    @property
    def baseline(self) -> nn.Module:
        """The served version's model (named as the trainer's LIVE model is)."""
        return self._current().model

    @property
    def device(self) -> torch.device:
        """Where the served model runs."""
        return self._current().device

    def _current(self) -> _Served:
        served = self._served
        if served is None:
            raise RuntimeError("no version is served yet; check Follower.version first")
        return served

    def _version_under_lock(self) -> int | None:
        return self.version

    def __call__(self, request: Any) -> Answer:
        """Answer one parsed ``/v1/score`` request; 503 until a version is served."""
        if self._served is None:  # once set it is never unset, so the scorer can go ahead
            return 503, {
                "error": f"no model version is served yet: {self.health.reason}. The follower "
                "serves the store's LIVE version as soon as one can be loaded; a trainer "
                "(`feedstep run`) publishes one, or make one LIVE with "
                "`feedstep promote --version N`"
            }
        return self.scorer(request)

    # -- following --------------------------------------------------------------------------------
    def notify(self, value: bytes | None = None) -> None:
        """A message arrived on the model-updates topic: read LIVE now (on the follower's thread).

        Called by :class:`streaming.kafka.updates.UpdatesListener` with the message's value;
        it only decodes it for the log and wakes the loop, so it never blocks the listener.
        """
        self.metrics.follower_update_messages.inc()
        if value is not None:
            try:
                update = decode_update(value)
            except ValueError as exc:
                log.warning("a model-updates message was not understood (%s); reading LIVE", exc)
            else:
                log.info(
                    "model-updates: %s to version %d announced; reading LIVE",
                    update.action,
                    update.version,
                )
        self._wake.set()

    def check(self, trigger: str = "poll", force: bool = False) -> bool:
        """Read LIVE once and switch to it if it changed; True when it switched.

        Called by :meth:`run`'s loop (tests call it directly instead); one caller at a time.

        Args:
            trigger: what asked (``start``, ``poll``, ``update``), the switch metric's label.
            force: try a version refused before even if its backoff has not passed
                (a model-updates message asks so).
        """
        store = self._open_store()
        if store is None:
            return False
        try:
            live = store.live_version()
        except StoreError as exc:
            if not self._backing_off(_UNREADABLE_LIVE, force):
                self._refuse(_UNREADABLE_LIVE, VersionRefused("error", str(exc)))
            return False
        if live is None:
            if self._served is None:
                self.health.set_ready(False, f"no LIVE version in the model store {self.root} yet")
            return False
        if live == self.version:
            self._refused = None
            return False
        if self._backing_off(live, force):
            return False  # refused a moment ago: wait for its backoff
        started = time.perf_counter()
        try:
            loaded = self._load(store, live)
        except VersionRefused as exc:
            self._refuse(live, exc)
            return False
        with self.lock:  # the only write of what is served: requests see old or new, whole
            previous = self.version
            self._served = loaded
        self._refused = None
        self.switches += 1
        self.metrics.switched(live, previous, trigger)
        self.health.set_ready(True)
        log.info(
            "serving version %d of %s (was %s; %s, loaded and verified in %.2f s)",
            live,
            self.root,
            previous,
            trigger,
            time.perf_counter() - started,
        )
        return True

    def _open_store(self) -> ModelStore | None:
        if self._store is not None:
            return self._store
        try:
            self._store = ModelStore(self.root, create=False)
        except StoreError:
            reason = f"no model store at {self.root} yet"
            if not self._said_missing:
                log.warning(
                    "%s; waiting for it (a trainer creates it; check --store if it never comes)",
                    reason,
                )
                self._said_missing = True
            if self._served is None:
                self.health.set_ready(False, reason)
            return None
        return self._store

    def _load(self, store: ModelStore, version: int) -> _Served:
        """Load ``version`` fully, off the lock; :class:`VersionRefused` says why it cannot be."""
        from learner.models import load_reward_version

        try:
            info = store.version(version)
        except VersionNotFound as exc:
            raise VersionRefused("missing", str(exc)) from exc
        except StoreError as exc:  # unreadable manifest, unknown format or kind
            raise VersionRefused("unsupported", str(exc)) from exc
        _check_servable(info)
        report = store.verify(version)
        if not report.ok:
            raise VersionRefused(
                "corrupt",
                f"its files fail the manifest check ({'; '.join(report.problems[:3])})",
            )
        try:
            model, tokenizer = load_reward_version(info)
            objective = RewardObjective(tokenizer, max_length=self.settings.max_length)
            model = model.to(self._device).eval().requires_grad_(False)
            with torch.no_grad():
                probe = objective.model_values(model, objective.collate([_PROBE]).to(self._device))
        except Exception as exc:  # a torn or foreign file: refuse it, keep serving
            problem = f"it does not load ({type(exc).__name__}: {exc})"
            raise VersionRefused("error", problem) from exc
        if not all(math.isfinite(x) for x in probe.float().cpu().tolist()):
            raise VersionRefused("error", "its reward for a fixed probe is not finite")
        return _Served(version, objective, model, self._device)

    def _backing_off(self, version: int, force: bool) -> bool:
        """True while ``version`` was refused and its retry time has not come (unless forced)."""
        refused = self._refused
        return (
            not force
            and refused is not None
            and refused[0] == version
            and self._clock() < refused[1]
        )

    def _refuse(self, version: int, exc: VersionRefused) -> None:
        """Count and log a refused version, keep serving the old one, and back off."""
        delay = self.settings.poll_s
        if self._refused is not None and self._refused[0] == version:
            delay = min(self._refused[2] * 2, max(RETRY_MAX_S, self.settings.poll_s))
        self._refused = (version, self._clock() + delay, delay)
        self.refusals += 1
        self.metrics.follower_load_failures.labels(reason=exc.reason).inc()
        what = "LIVE" if version == _UNREADABLE_LIVE else f"LIVE version {version}"
        log.error(
            "not switching to %s of %s (%s): %s; still serving version %s, trying again in %.0f s",
            what,
            self.root,
            exc.reason,
            exc,
            self.version,
            delay,
        )
        if self._served is None:
            self.health.set_ready(False, f"{what} of {self.root} cannot be served ({exc.reason})")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Follow until :meth:`stop`: read LIVE at start, then every ``poll_s`` or on a message.

        Loads run here, on the calling thread. A stop asked before ``run`` starts still counts
        (a SIGTERM during start-up).
        """
        self._step("start", force=True)
        while not self._stop.is_set():
            woken = self._wake.wait(self.settings.poll_s)
            if self._stop.is_set():
                break
            self._wake.clear()  # before reading LIVE: a message during the check wakes us again
            self._step("update" if woken else "poll", force=woken)

    def _step(self, trigger: str, force: bool) -> None:
        self.health.beat()
        try:
            self.check(trigger, force=force)
        except Exception:  # a bug must not stop the follower: the next turn tries again
            log.exception("checking the LIVE version of %s failed", self.root)
        self.health.beat()

    def start(self) -> Follower:
        """Run :meth:`run` on a daemon thread (tests, embedding); returns self."""
        self._thread = threading.Thread(target=self.run, name="feedstep-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask :meth:`run` to return (after a load in progress) and wait for a started thread."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)


def _check_servable(info: VersionInfo) -> None:
    if info.kind not in SERVED_KINDS:
        raise VersionRefused(
            "unsupported",
            f"it is of kind {info.kind!r}; the follower serves kinds {SERVED_KINDS} - promote "
            "another version",
        )
    if info.model_type != SERVED_MODEL_TYPE:
        raise VersionRefused(
            "unsupported",
            f"it is a {info.model_type!r} model (objective {info.objective!r}); the follower "
            f"serves {SERVED_MODEL_TYPE!r} versions (the 'reward' objective) only",
        )
