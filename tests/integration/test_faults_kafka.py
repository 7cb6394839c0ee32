"""Fault tests against the real broker: kill -9, a broker outage, a member leaving, SIGTERM.

Every scenario ends with the same check (tests/integration/faultlib.py): the final checkpoints'
ledgers cover each offset exactly once and the trained events are exactly the valid ones; with
pair mining, also that every mined pair trained exactly once.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.faultlib import (
    Feeder,
    LocalBroker,
    Sidecar,
    committed_offsets,
    create_topic,
    final_checkpoint,
    held_in,
    http_status,
    kill_trials,
    ledger_of,
    mining_kill_trials,
    sidecar_config,
    verify,
    verify_pairs,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_kill_9_at_random_points_loses_nothing_and_trains_nothing_twice(
    kafka_bootstrap, topic_name, tmp_path
):
    # 40 events/s: each short-lived sidecar still starts behind (a kill lands mid-backlog)
    # while the drain stays short.
    produced, last, delays = kill_trials(
        kafka_bootstrap, topic_name, tmp_path, trials=10, seed=11, rate=40.0
    )
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


def test_kill_9_with_pair_mining_replace_trains_every_pair_exactly_once(
    kafka_bootstrap, topic_name, tmp_path
):
    produced, last, held = mining_kill_trials(
        kafka_bootstrap, topic_name, tmp_path, trials=3, seed=13, rate=30.0
    )
    rc = last.wait(timeout=240)
    assert rc == 0, last.tail()
    # some restart resumed with thumbs held back for a partner that came after the checkpoint
    assert max(held) > 0, held
    ledger = ledger_of(tmp_path / "store")
    assert verify([ledger], produced) == []
    assert verify_pairs([ledger], produced) == []
    assert ledger.pairs == len(produced.pairs) > 50 and ledger.pairs_skipped == 0
    assert held_in(tmp_path / "store") == 0  # nothing left waiting: every pair formed
    ends = produced.ends()
    assert committed_offsets(kafka_bootstrap, f"{topic_name}-group", topic_name, 3) == ends
    assert ledger.rejected > 0 and ledger.duplicates > 0  # the mix really had both


def test_sigterm_mid_run_exits_0_in_time_with_commits_equal_to_the_checkpoint(
    kafka_bootstrap, topic_name, tmp_path
):
    create_topic(kafka_bootstrap, topic_name, 2)
    group = f"{topic_name}-group"
    store = tmp_path / "store"
    config = sidecar_config(
        tmp_path / "c.toml", kafka_bootstrap, topic_name, group, store, stop_when_idle_s=120.0
    )
    feeder = Feeder(kafka_bootstrap, topic_name, 2, seed=5)
    feeder.start(rate=150)
    try:
        sidecar = Sidecar(config, "sidecar", tmp_path / "sidecar.log")
        sidecar.wait_for(r"partitions assigned: \[\(")
        sidecar.wait_for(r"steps=[1-9]")  # mid-run: it has trained and events keep coming
        sidecar.terminate()
        bound = 10.0 + 20.0  # shutdown_timeout_s, plus closing the consumer and the process
        rc = sidecar.wait(timeout=bound)
    finally:
        produced = feeder.stop()
    assert rc == 0, sidecar.tail()
    _, _, extra = final_checkpoint(store)
    offsets = {p: o for _, p, o in extra["offsets"]}
    assert committed_offsets(kafka_bootstrap, group, topic_name, 2) == offsets
    assert sum(offsets.values()) > 0
    assert sum(offsets.values()) < len(produced.messages)  # really stopped mid-stream
    ledger = ledger_of(store)
    assert verify([ledger], produced, ends=offsets) == []


def test_one_of_two_sidecars_leaves_and_the_union_of_ledgers_is_exact(
    kafka_bootstrap, topic_name, tmp_path
):
    create_topic(kafka_bootstrap, topic_name, 4)
    group = f"{topic_name}-group"
    configs = [
        sidecar_config(
            tmp_path / f"{name}.toml",
            kafka_bootstrap,
            topic_name,
            group,
            tmp_path / name,
            stop_when_idle_s=5.0,
        )
        for name in ("a", "b")
    ]
    feeder = Feeder(kafka_bootstrap, topic_name, 4, seed=9)
    feeder.start(rate=150)
    try:
        a = Sidecar(configs[0], "sidecar a", tmp_path / "a.log")
        a.wait_for(r"partitions assigned: \[\(")
        b = Sidecar(configs[1], "sidecar b", tmp_path / "b.log")
        b.wait_for(r"partitions assigned: \[\(")
        b.wait_for(r"steps=[1-9]")
        mark = a.mark()
        b.terminate()
        assert b.wait(timeout=40) == 0, b.tail()
        # a took all four after b left (its first assignment before b joined does not count)
        a.wait_for(r"partitions assigned: \[(\('[^']+', \d\)(, )?){4}\]", since=mark)
        time.sleep(2.0)
    finally:
        produced = feeder.stop()
    assert a.wait(timeout=180) == 0, a.tail()
    ledgers = [ledger_of(tmp_path / "a"), ledger_of(tmp_path / "b")]
    assert verify(ledgers, produced) == []
    assert ledgers[1].trained > 0  # b really trained on its share before leaving
    handed = set(ledgers[0].ranges) & set(ledgers[1].ranges)
    assert handed  # a read on where b stopped on at least one partition
    assert committed_offsets(kafka_bootstrap, group, topic_name, 4) == produced.ends()


def test_broker_outage_mid_run_is_survived_without_a_restart(topic_name, tmp_path):
    port = int(os.environ.get("KAFKA_PORT", "9092")) + 200
    broker = LocalBroker(port)
    broker.start(fresh=True)
    try:
        bootstrap = broker.bootstrap
        create_topic(bootstrap, topic_name, 2)
        group = f"{topic_name}-group"
        store = tmp_path / "store"
        config = sidecar_config(
            tmp_path / "c.toml", bootstrap, topic_name, group, store, stop_when_idle_s=120.0
        )
        feeder = Feeder(bootstrap, topic_name, 2, seed=21)
        feeder.produce(300)
        sidecar = Sidecar(config, "sidecar", tmp_path / "sidecar.log")
        readyz = f"http://127.0.0.1:{sidecar.metrics_port()}/readyz"

        def readiness() -> tuple[int, str]:
            # an outage must never end the process: say so with its log, not with a timeout
            assert sidecar.proc.poll() is None, f"the sidecar exited:\n{sidecar.tail()}"
            return http_status(readyz)

        def drained() -> bool:
            ends = feeder.produced.ends()
            return committed_offsets(bootstrap, group, topic_name, 2) == ends

        wait_until("the first 300 events committed", drained, timeout=120)
        assert http_status(readyz)[0] == 200
        broker.stop()
        status, body = wait_until(
            "/readyz to say not ready",
            lambda: (lambda r: r if r[0] == 503 else None)(readiness()),
            timeout=60,
        )
        assert "broker unreachable" in body or "commit" in body
        time.sleep(2.0)
        broker.start()
        wait_until("/readyz to be ready again", lambda: readiness()[0] == 200, 120)
        feeder.produce(300)
        wait_until("the next 300 events committed", drained, timeout=120)
        sidecar.terminate()
        assert sidecar.wait(timeout=60) == 0, sidecar.tail()
        produced = feeder.stop()
        assert verify([ledger_of(store)], produced) == []
        assert sidecar.proc.pid  # one process all along: no restart was needed
    finally:
        broker.stop()
