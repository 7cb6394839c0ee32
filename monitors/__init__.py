"""Measurements and decisions: drift detectors, Prometheus metrics, the promotion gate.

A leaf package: it takes plain values (per-event losses and error flags, cheap event
features, floats from the caller) and returns plain values (frozen dataclasses). It never
imports ``streaming`` or ``learner``.

- :mod:`monitors.base`: the ``Monitor`` interface.
- :mod:`monitors.alarms`: ``DriftAlarm``, the value every detector reports.
- :mod:`monitors.drift`: River detectors on per-event error and loss streams.
- :mod:`monitors.input_drift`: two-sample tests on cheap features of the events.
- :mod:`monitors.prequential`: windowed prequential loss and accuracy.
- :mod:`monitors.sequential`: the always-valid mixture SPRT.
- :mod:`monitors.gate`: the promotion gate; :mod:`monitors.promql` its PromQL checks.
- :mod:`monitors.rollback`: the rollback watch after a promotion.
- :mod:`monitors.decision`: the decision records (``Check``, ``GateDecision``...).
- :mod:`monitors.metrics`, :mod:`monitors.server`: every metric, and ``/metrics``.
- :mod:`monitors.simulate`: seeded synthetic streams; ``python -m monitors.simulate``.

Checkpoints: every stateful piece offers ``state_dict()`` (plain JSON values, no pickle) and
``load_state_dict(state)`` on an instance built with the same settings.
"""
