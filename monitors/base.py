"""Interface of the monitors: something that is updated with values and can raise an alarm.

Monitors are leaves: they take plain floats (per-example losses, correctness flags, feature
values) and expose plain values back. They know nothing of Kafka or of torch models.

Monitors that raise alarms report them as :class:`monitors.alarms.DriftAlarm` values; those
with state worth checkpointing add ``state_dict()`` / ``load_state_dict(state)`` (plain JSON
values). ``tests/unit/test_drift.py::test_monitor_contract`` runs the same checks over every
implementation.
"""

from __future__ import annotations

import abc


class Monitor(abc.ABC):
    """A stream statistic updated one value at a time.

    Example:
        >>> from monitors.prequential import WindowedMean
        >>> m = WindowedMean(window=2)
        >>> for x in (1.0, 2.0, 4.0):
        ...     m.update(x)
        >>> m.value
        3.0
    """

    @abc.abstractmethod
    def update(self, value: float) -> None:
        """Feed one value."""

    @property
    def drift_detected(self) -> bool:
        """True when the monitor's alarm is raised (never, for plain statistics)."""
        return False
