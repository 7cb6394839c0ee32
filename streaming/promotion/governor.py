"""Governance: drift monitors, the promotion gate, publishing and rollback, wired to a learner.

After every step the :class:`Governor` feeds the paired per-event losses and errors to the
monitors, asks the gate for a decision, and acts on it:

* **promote**: write the candidate as a new version in the model store, switch ``LIVE``,
  announce it on the model-updates topic (and, from the notifier's own thread, to an optional
  webhook and vLLM), make the candidate the new baseline (the L2-SP anchor and the sequential
  test restart from it);
* **rollback**: when the rollback watch finds the promoted version worse than the one before
  (or a drift alarm fires on the live model's error stream), switch ``LIVE`` back, load the
  previous weights into both models, and announce it.

With ``publish=False`` (``feedstep replay``'s dry run) decisions are computed and recorded but
nothing is written to the store or to Kafka, and the models are not switched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from learner.base import TensorBatch
from learner.probe import Probe, ProbeResult
from learner.step import Learner, StepResult
from learner.store import ADAPTER_DIR, ModelStore, check_fits, read_state
from monitors.alarms import DriftAlarm
from monitors.decision import GateDecision, RollbackDecision
from monitors.drift import DriftMonitor
from monitors.gate import Gate, GateConfig, HoldoutResult
from monitors.input_drift import InputDriftMonitor, InputFeatures
from monitors.metrics import Metrics
from monitors.rollback import RollbackConfig, RollbackWatch
from streaming.base import Sink
from streaming.promotion.notify import Notifier, NotifySettings

log = logging.getLogger(__name__)

ACTOR = "feedstep-gate"


@dataclass(frozen=True, slots=True)
class GovernanceSettings:
    """What the governor watches and how it acts."""

    gate: GateConfig = field(default_factory=GateConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    drift_detector: str = "adwin"
    updates_topic: str = "feedstep.model-updates"
    publish: bool = True
    webhook_url: str | None = None
    holdout_every_steps: int = 50
    probe_every_steps: int = 50
    boost_factor: float = 2.0
    boost_steps: int = 50
    input_drift: bool = True


@dataclass(slots=True)
class Event:
    """One decision or switch, in order, for reports (replay) and tests."""

    index: int
    kind: str
    detail: dict[str, Any]


class Governor:
    """Monitors + gate + store for one learner.

    Args:
        learner: the baseline/candidate pair.
        store: the model store (``None`` only with ``publish=False``).
        updates: where model-updates messages go (the Kafka sink; ``None`` in dry runs).
        metrics: the process's metric set.
        settings: see :class:`GovernanceSettings`.
        lock: held while the learner's weights are read or switched, so a step in flight on
            the training thread never races a promotion.
        holdout: a fixed holdout batch (already collated), scored every
            ``holdout_every_steps`` steps; ``None`` leaves the holdout check inconclusive.
        objective: the objective's name for manifests.
        probe: the probe set (:class:`learner.probe.Probe`), measured every
            ``probe_every_steps`` steps; its KL(candidate ‖ live) feeds the gate's ``probe_kl``
            check and ``feedstep_probe_kl``. ``None`` switches that check off.
        notifier: delivers the webhook and vLLM hot-loads on its own thread; None: one for
            ``settings.webhook_url`` alone. :meth:`close` closes it.

    Attributes:
        on_decision: called after every step with the events seen so far and each decision
            made (the rollback watch's, then the gate's unless it rolled back); ``feedstep
            replay`` collects them for its report. None: no callback.
    """

    def __init__(
        self,
        learner: Learner,
        store: ModelStore | None,
        updates: Sink | None,
        metrics: Metrics,
        settings: GovernanceSettings | None = None,
        lock: threading.Lock | None = None,
        holdout: TensorBatch | None = None,
        objective: str = "reward",
        notifier: Notifier | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.learner = learner
        self.store = store
        self.updates = updates
        self.metrics = metrics
        self.settings = settings or GovernanceSettings()
        s = self.settings
        if s.publish and store is None:
            raise ValueError("publishing needs a model store; pass store= or publish=False")
        self.lock = lock or threading.Lock()
        self.holdout = holdout
        self.objective = objective
        self.notifier = notifier or Notifier(NotifySettings(webhook_url=s.webhook_url), metrics)
        self._said_not_lora = False
        self.probe = probe
        self.probe_result: ProbeResult | None = None
        """The latest probe measurement since the last switch (None: not measured since)."""
        # The gate's probe_kl check is off exactly when there is no probe to measure.
        self.gate = Gate(replace(s.gate, probe_configured=probe is not None))
        self.watch = RollbackWatch(s.rollback)
        self.candidate_errors = DriftMonitor(
            "candidate_error",
            detector=s.drift_detector,
            metrics=metrics,
            on_alarm=self._candidate_alarm,
        )
        self.live_errors = DriftMonitor(
            "live_error", detector=s.drift_detector, metrics=metrics, on_alarm=self._live_alarm
        )
        self.inputs = (
            InputDriftMonitor(metrics=metrics, on_alarm=self._input_alarm)
            if s.input_drift
            else None
        )
        self.events = 0
        self.steps = 0
        self.history: list[Event] = []
        self.on_decision: Callable[[int, GateDecision | RollbackDecision], None] | None = None
        self._holdout_result: HoldoutResult | None = None
        self.live_version: int | None = store.live_version() if store is not None else None
        if self.live_version is not None:
            metrics.set_live_version(str(self.live_version))

    # -- start ------------------------------------------------------------------------------
    def ensure_initial_version(self, tokenizer: Any) -> None:
        """With an empty store, publish the starting model as version 1 and make it LIVE.

        A rollback then always has a version to return to.
        """
        if not self.settings.publish or self.store is None or self.live_version is not None:
            return
        info = self.store.publish(
            self.learner.publishable("baseline"),
            tokenizer,
            objective=self.objective,
            metrics={},
            reason="initial baseline",
        )
        switch = self.store.promote(info.version, "initial baseline", ACTOR)
        self.live_version = info.version
        self.metrics.set_live_version(str(info.version))
        self._announce("promote", info.version, None, "initial baseline", {}, switch.to_json())

    # -- per step ---------------------------------------------------------------------------
    def after_step(
        self, result: StepResult, features: Sequence[InputFeatures], tokenizer: Any
    ) -> None:
        """Feed one step's paired outcomes to the monitors, then decide and act."""
        base_loss = result.baseline.loss.tolist()
        cand_loss = result.candidate.loss.tolist()
        self.candidate_errors.update_many(_errors(result.candidate.correct.tolist()))
        self.live_errors.update_many(_errors(result.baseline.correct.tolist()))
        if self.inputs is not None:
            self.inputs.update_many(features)
        self.gate.observe(base_loss, cand_loss)
        self.watch.observe(base_loss)
        self.events += len(base_loss)
        self.steps += 1
        if self.holdout is not None and self.steps % self.settings.holdout_every_steps == 0:
            self._score_holdout()
        if self.probe is not None and self.steps % self.settings.probe_every_steps == 0:
            self._measure_probe()

        rollback = self.watch.decide()
        self.metrics.record_rollback_watch(rollback)
        if self.on_decision is not None:
            self.on_decision(self.events, rollback)
        if rollback.action == "rollback":
            self._rollback(rollback)
            self._forget_probe()  # both models now hold the version rolled back to
            return
        with self.lock:
            distance = self.learner.param_distance()
        probe_kl = self.probe_result.kl if self.probe_result is not None else None
        decision = self.gate.decide(
            holdout=self._holdout_result, param_distance=distance, probe_kl=probe_kl
        )
        self.metrics.record_gate(decision)
        if self.on_decision is not None:
            self.on_decision(self.events, decision)
        if decision.action == "promote":
            self._promote(decision, tokenizer)

    def _score_holdout(self) -> None:
        assert self.holdout is not None
        with self.lock:
            base, cand = self.learner.score(self.holdout)
        self._holdout_result = HoldoutResult(
            baseline_loss=float(base.loss.mean()),
            candidate_loss=float(cand.loss.mean()),
            step=self.steps,
        )

    def _measure_probe(self) -> None:
        assert self.probe is not None
        with self.lock:
            result = self.probe.measure(self.learner)
        self.probe_result = result
        self.metrics.record_probe(result.kl, result.score_drift, result.seconds)
        gap = result.score_drift
        drift = "" if gap is None else f", mean |reward change| {gap:.4g}"
        log.info(
            "probe at step %d: KL(candidate || live) %.4g nats over %d %s of %d probes%s (%.2f s)",
            self.steps,
            result.kl,
            result.positions,
            "tokens" if result.score_drift is None else "lines",
            len(self.probe),
            drift,
            result.seconds,
        )

    def _forget_probe(self) -> None:
        """After a switch both models are the same: the old value is void until measured again."""
        self.probe_result = None
        if self.probe is not None:
            self.metrics.record_probe(None)

    # -- acting -----------------------------------------------------------------------------
    def _promote(self, decision: GateDecision, tokenizer: Any) -> None:
        record = json.loads(decision.to_json())
        metrics = {
            "events": decision.events,
            "mean_loss_difference": _finite(decision.mean_difference),
            "test_statistic": _finite(decision.test_statistic),
        }
        old = self.live_version
        if self.settings.publish and self.store is not None:
            with self.lock:
                info = self.store.publish(
                    self.learner.publishable("candidate"),
                    tokenizer,
                    objective=self.objective,
                    metrics=metrics,
                    reason=decision.reason,
                    parent=old,
                )
                switch = self.store.promote(info.version, decision.reason, ACTOR)
                self.learner.rebase()
                self.live_version = info.version  # with the weights: /v1/score reads both
            new = info.version
            self._announce("promote", new, old, decision.reason, metrics, switch.to_json())
        else:
            new = (old or 0) + 1
            with self.lock:
                self.learner.rebase()
                self.live_version = new
        self.metrics.promotions.labels(reason="gate").inc()
        self.metrics.set_live_version(str(new), str(old) if old is not None else None)
        self.gate.reset()
        self.watch.promoted(str(new), str(old) if old is not None else None)
        self._holdout_result = None
        self._forget_probe()
        self.history.append(Event(self.events, "promote", {"to": new, "from": old, **record}))
        log.info(
            "promoted version %s (parent %s) after %d events: %s",
            new,
            old,
            decision.events,
            decision.reason,
        )

    def _rollback(self, decision: RollbackDecision) -> None:
        record = json.loads(decision.to_json())
        old = self.live_version
        if self.settings.publish and self.store is not None:
            # Read the weights before LIVE moves (off the lock: a full model takes seconds), so
            # a version this learner cannot load is refused before anything switches.
            target = self.store.rollback_target()
            state = self._state_of(target) if target is not None else None
            with self.lock:
                switch = self.store.rollback(decision.reason, ACTOR)
                if state is None or switch.to_version != target:  # an operator switched too
                    state = self._state_of(switch.to_version)
                self.learner.reset_to(state)
                self.live_version = switch.to_version
            new: int | None = switch.to_version
            self._announce(
                "rollback", switch.to_version, old, decision.reason, {}, switch.to_json()
            )
        else:
            new = None  # a dry run has no stored weights to go back to; it records the decision
        self.live_version = new if new is not None else old
        self.metrics.rollbacks.labels(reason=decision.cause or "degraded").inc()
        self.watch.rolled_back()
        self.gate.reset()
        self.history.append(Event(self.events, "rollback", {"to": new, "from": old, **record}))
        log.warning("rolled back from version %s to %s: %s", old, new, decision.reason)

    def _state_of(self, version: int) -> dict[str, Any]:
        """The stored weights of ``version``, checked to fit the learner (kind, base)."""
        assert self.store is not None
        info = self.store.version(version)
        check_fits(info, self.learner.config.trainable, self.learner.base)
        return read_state(info)

    def _announce(
        self,
        action: str,
        version: int,
        parent: int | None,
        reason: str,
        metrics: dict[str, Any],
        switch: dict[str, Any],
    ) -> None:
        if self.store is None:
            return
        folder = self.store.path(version)
        manifest_sha = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
        message = {
            "action": action,
            "version": version,
            "parent": parent,
            "path": str(folder.resolve()),
            "sha256": manifest_sha,  # of manifest.json, which lists every file's sha256
            "objective": self.objective,
            "metrics": metrics,
            "reason": reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "switch": switch,
        }
        body = json.dumps(message, sort_keys=True).encode()
        if self.updates is not None:
            self.updates.send(self.settings.updates_topic, body, key=str(version).encode())
            self.updates.flush()
        # HTTP targets are queued, never awaited here: this runs on the training thread, and a
        # slow or unreachable webhook or vLLM must not stall training (the switch happened).
        self.notifier.webhook(version, body)
        self._hot_load(version)

    def _hot_load(self, version: int) -> None:
        """Ask vLLM (when ``vllm_url`` is set) to load ``version``'s adapter in place."""
        if "vllm" not in self.notifier.targets or self.store is None:
            return
        info = self.store.version(version)
        if info.kind != "lora":
            if not self._said_not_lora:
                self._said_not_lora = True
                log.warning(
                    "vllm_url is set but version %d is of kind %r: vLLM hot-load needs versions "
                    "of kind 'lora' (trainable = \"lora\"), so no version of another kind is "
                    "hot-loaded (said once)",
                    version,
                    info.kind,
                )
            return
        adapter = info.path / ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():  # vLLM would refuse it forever
            log.warning(
                "version %d is of kind 'lora' but has no %s/adapter_config.json; not hot-loaded",
                version,
                ADAPTER_DIR,
            )
            return
        self.notifier.hot_load(version, adapter)

    def hot_load_live(self) -> None:
        """Hot-load the LIVE version into vLLM, e.g. at start, when it was published earlier.

        vLLM forgets adapters loaded at run time when it restarts, and a switch may have been
        made while this process was down; loading LIVE at start puts both right.
        """
        if self.live_version is not None and self.settings.publish:
            self._hot_load(self.live_version)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Deliver the notifications still waiting (within ``timeout_s``) and stop their thread.

        Returns True when nothing was left undelivered.
        """
        return self.notifier.close(timeout_s)

    # -- alarms -----------------------------------------------------------------------------
    def _candidate_alarm(self, alarm: DriftAlarm) -> None:
        self.gate.note_alarm(alarm)
        self.history.append(Event(self.events, "drift", alarm.to_dict()))

    def _live_alarm(self, alarm: DriftAlarm) -> None:
        self.watch.note_alarm(alarm)
        self.history.append(Event(self.events, "drift", alarm.to_dict()))

    def _input_alarm(self, alarm: DriftAlarm) -> None:
        self.history.append(Event(self.events, "drift", alarm.to_dict()))
        boost = getattr(self.learner, "boost", None)
        if boost is not None:
            boost(self.settings.boost_factor, self.settings.boost_steps)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON state of every monitor, for the learner checkpoint's ``extra``."""
        return {
            "gate": self.gate.state_dict(),
            "watch": self.watch.state_dict(),
            "candidate_errors": self.candidate_errors.state_dict(),
            "live_errors": self.live_errors.state_dict(),
            "inputs": self.inputs.state_dict() if self.inputs is not None else None,
            "events": self.events,
            "steps": self.steps,
            "live_version": self.live_version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (from this process's own checksummed checkpoint)."""
        self.gate.load_state_dict(state["gate"])
        self.watch.load_state_dict(state["watch"])
        self.candidate_errors.load_state_dict(state["candidate_errors"])
        self.live_errors.load_state_dict(state["live_errors"])
        if self.inputs is not None and state.get("inputs") is not None:
            self.inputs.load_state_dict(state["inputs"])
        self.events = int(state["events"])
        self.steps = int(state["steps"])
        saved = state.get("live_version")
        if saved is not None and self.live_version is not None and saved != self.live_version:
            log.warning(
                "the checkpoint was taken with version %s live but the store's LIVE is %s "
                "(switched while this sidecar was down?); the weights come from the checkpoint. "
                "To start from LIVE instead, move the checkpoint directory away and restart",
                saved,
                self.live_version,
            )


def _errors(correct: Sequence[float]) -> list[float]:
    return [1.0 - c if not math.isnan(c) else math.nan for c in correct]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def features_of(prompt: str, response: str, feedback_type: str) -> InputFeatures:
    """Cheap input features of one event (lengths in characters, the feedback type)."""
    return InputFeatures(
        prompt_length=float(len(prompt)),
        response_length=float(len(response)),
        feedback_type=feedback_type,
    )


def load_holdout(path: str | Path, objective: Any, max_events: int = 2000) -> TensorBatch:
    """Read a holdout JSONL file (the feedback event schema) and collate it once.

    Lines that do not decode are an error here, not dead letters: a holdout set is curated.
    """
    from streaming.errors import ConfigError
    from streaming.events import Rejection, decode_event, to_example

    examples = []
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"holdout_file {str(p)!r} does not exist; pass a JSONL file of events")
    with p.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            decoded = decode_event(line.rstrip(b"\r\n"))
            if isinstance(decoded, Rejection):
                raise ConfigError(
                    f"holdout_file {str(p)!r} line {number}: {decoded.reason.value}: "
                    f"{decoded.detail}"
                )
            examples.append(to_example(decoded))
            if len(examples) >= max_events:
                break
    if not examples:
        raise ConfigError(f"holdout_file {str(p)!r} holds no events")
    return objective.collate(examples)  # type: ignore[no-any-return]


def write_decisions(path: Path, events: Sequence[Event]) -> None:
    """Write the decision history as JSON (used by replay reports)."""
    path.write_text(
        json.dumps([{"index": e.index, "kind": e.kind, **e.detail} for e in events], indent=2)
    )
