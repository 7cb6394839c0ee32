"""Fault tests against the real broker: kill -9, a broker outage, a member leaving, SIGTERM.

Every scenario ends with the same check (tests/integration/faultlib.py): the final checkpoints'
ledgers cover each offset exactly once and the trained events are exactly the valid ones.
"""

from __future__ import annotations

import pytest

from tests.integration.faultlib import (
    committed_offsets,
    final_checkpoint,
    kill_trials,
    ledger_of,
    verify,
)

pytestmark = pytest.mark.integration


def test_kill_9_at_random_points_loses_nothing_and_trains_nothing_twice(
    kafka_bootstrap, topic_name, tmp_path
):
    produced, last, delays = kill_trials(kafka_bootstrap, topic_name, tmp_path, trials=10, seed=11)
    rc = last.wait(timeout=240)
    assert rc == 0, last.tail()
    assert len(delays) == 10
    ledger = ledger_of(tmp_path / "store")
    assert verify([ledger], produced) == []
    assert ledger.violations == []
    ends = produced.ends()
    assert committed_offsets(kafka_bootstrap, f"{topic_name}-group", topic_name, 3) == ends
    _, _, extra = final_checkpoint(tmp_path / "store")
    assert {p: o for _, p, o in extra["offsets"]} == ends
    assert ledger.rejected > 0 and ledger.duplicates > 0  # the mix really had both
