"""KafkaSource (kafka-python's KafkaConsumer in the sidecar's process) against the real broker.

Every record once and in order, seeks, commits with and without waiting, rebalance hooks that
commit what was handed out, pause and resume, an idle member that waits instead of spinning.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from streaming.config import load_config
from streaming.errors import BrokerUnavailable, SourceError
from streaming.kafka import KafkaSource

pytestmark = pytest.mark.integration


def _fill(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(per_partition):
        for p in range(partitions):
            producer.send(topic, value=f"{p}:{i}".encode(), key=b"k%d" % p, partition=p)
    producer.flush()
    producer.close()


def _config(bootstrap: str, topic: str, group: str | None = None, **extra):
    return load_config(
        overrides={
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "group_id": group or f"{topic}-g",
            "max_poll_records": 100,
            "session_timeout_ms": 10_000,
            **extra,
        },
        environ={},
    ).kafka


def _poll_until(source, want: int, timeout_s: float = 60.0, out=None):
    out = [] if out is None else out
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out.extend(source.poll(0.5, max_records=37))
    return out


def _offsets_by_partition(records) -> dict[int, list[int]]:
    by: dict[int, list[int]] = {}
    for r in records:
        by.setdefault(r.partition, []).append(r.offset)
    return by


def _group_committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {
            p: probe.committed(TopicPartition(topic, p))
            for p in range(partitions)
            if probe.committed(TopicPartition(topic, p)) is not None
        }
    finally:
        probe.close(autocommit=False)


def test_every_record_once_in_order_then_commit_and_lag(kafka_bootstrap, topic_name):
    _fill(kafka_bootstrap, topic_name, 2, 600)
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        records = _poll_until(source, 1200)
        assert len(records) == 1200
        assert _offsets_by_partition(records) == {0: list(range(600)), 1: list(range(600))}
        first = next(r for r in records if r.partition == 1 and r.offset == 5)
        assert (first.key, first.value) == (b"k1", b"1:5")
        assert first.timestamp_ms is not None and first.timestamp_ms > 0
        assert source.has_assignment() and source.connected()
        assert source.position() == {(topic_name, 0): 600, (topic_name, 1): 600}
        source.commit({(topic_name, 0): 600, (topic_name, 1): 598})
        assert source.committed() == {(topic_name, 0): 600, (topic_name, 1): 598}
        deadline = time.monotonic() + 10
        while source.lag() != {(topic_name, 0): 0, (topic_name, 1): 0}:
            assert time.monotonic() < deadline, source.lag()
            source.poll(0.2)
    finally:
        source.close()
    assert _group_committed(kafka_bootstrap, topic_name, f"{topic_name}-g", 2) == {0: 600, 1: 598}


def test_commit_nowait_is_answered_even_when_another_call_reads_replies_first(
    kafka_bootstrap, topic_name
):
    _fill(kafka_bootstrap, topic_name, 2, 300)
    group = f"{topic_name}-g"
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        records = _poll_until(source, 600)
        assert len(records) == 600
        source.commit_nowait({(topic_name, 0): 250, (topic_name, 1): 240})
        # a seek is answered after the commit: its wait reads the commit's reply and keeps it
        source.seek({(topic_name, 0): 300})
        assert source.commit_result(wait=True) is True
        assert source.committed() == {(topic_name, 0): 250, (topic_name, 1): 240}
        assert source.commit_result() is True  # nothing outstanding any more
        # a second one is sent only after the first is settled; commit() settles the last
        source.commit_nowait({(topic_name, 0): 280, (topic_name, 1): 260})
        source.commit_nowait({(topic_name, 0): 290, (topic_name, 1): 270})
        source.commit({(topic_name, 0): 300, (topic_name, 1): 300})
        assert source.commit_result() is True
        assert source.committed() == {(topic_name, 0): 300, (topic_name, 1): 300}
    finally:
        source.close()
    assert _group_committed(kafka_bootstrap, topic_name, group, 2) == {0: 300, 1: 300}


def test_a_failed_commit_nowait_is_raised_by_commit_result(kafka_bootstrap, topic_name):
    _fill(kafka_bootstrap, topic_name, 1, 50)
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        assert len(_poll_until(source, 50)) == 50
        # a partition this member does not own: the broker (or the client) refuses the commit
        source.commit_nowait({(topic_name, 7): 1})
        with pytest.raises(SourceError):
            source.commit_result(wait=True)
        assert source.commit_result() is True  # the failure was reported once
        assert (topic_name, 7) not in source.committed()
    finally:
        source.close()


def test_seek_drops_records_already_sent_and_rereads(kafka_bootstrap, topic_name):
    _fill(kafka_bootstrap, topic_name, 1, 3000)
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        got = _poll_until(source, 250)
        time.sleep(1.0)  # let the client fetch ahead: records wait in its buffer
        source.seek({(topic_name, 0): 100})
        assert source.position() == {(topic_name, 0): 100}
        after = _poll_until(source, 2900)
        assert [r.offset for r in after] == list(range(100, 3000))
        assert [r.offset for r in got] == list(range(len(got)))
    finally:
        source.close()


def test_rebalance_hooks_commit_and_members_split_exactly(kafka_bootstrap, topic_name):
    """A second member joins: the first's revoke hook commits what it handed out; the union of
    both members' records is every offset exactly once."""
    partitions, per = 4, 1500
    _fill(kafka_bootstrap, topic_name, partitions, per)
    group = f"{topic_name}-g"
    seen: dict[str, list] = {"a": [], "b": []}
    events: list[tuple[str, str, list]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def member(name: str, delay_s: float) -> None:
        time.sleep(delay_s)
        source = KafkaSource(_config(kafka_bootstrap, topic_name, group))
        handed: dict = {}

        def on_revoke(tps):
            events.append((name, "revoked", list(tps)))
            source.commit({tp: handed[tp] for tp in tps if tp in handed})
            for tp in tps:
                handed.pop(tp, None)

        def on_assign(tps):
            events.append((name, "assigned", list(tps)))

        source.set_rebalance_hooks(on_revoke, on_assign)
        try:
            while not stop.is_set():
                for r in source.poll(0.2, max_records=50):
                    assert r.tp in source.position(), "record of a partition not assigned"
                    seen[name].append(r)
                    handed[r.tp] = r.offset + 1
                    if name == "a":
                        time.sleep(0.002)  # slow enough for b to join mid-topic
            source.commit(handed)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            source.close()

    threads = [
        threading.Thread(target=member, args=("a", 0.0)),
        threading.Thread(target=member, args=("b", 2.0)),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(seen["a"]) + len(seen["b"]) < partitions * per and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # nothing more may arrive
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert any(e[:2] == ("a", "revoked") for e in events), events
    assert seen["b"], "the second member never got records"
    union = _offsets_by_partition(seen["a"] + seen["b"])
    assert {p: sorted(offs) for p, offs in union.items()} == {
        p: list(range(per)) for p in range(partitions)
    }


def test_no_broker_is_broker_unavailable_after_the_bootstrap_timeout():
    config = load_config(
        overrides={
            "bootstrap_servers": f"127.0.0.1:{_free_port()}",
            "topic": "nothing",
            "bootstrap_timeout_ms": 1500,
        },
        environ={},
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no Kafka broker answers"):
        KafkaSource(config.kafka)
    # The setting reaches the client: kafka-python's own default would wait 30 s.
    assert time.monotonic() - started < 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_commit_nowait_is_sent_at_once_and_answered_later(kafka_bootstrap, topic_name):
    """commit_nowait: sent at once, answered later, superseded by a sync commit."""
    _fill(kafka_bootstrap, topic_name, 2, 100)
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        assert len(_poll_until(source, 200)) == 200
        source.commit_nowait({(topic_name, 0): 40, (topic_name, 1): 41})
        deadline = time.monotonic() + 10
        while not source.commit_result():  # polling goes on meanwhile
            assert time.monotonic() < deadline
            source.poll(0.05)
        assert source.committed() == {(topic_name, 0): 40, (topic_name, 1): 41}
        source.commit_nowait({(topic_name, 0): 90})
        source.commit({(topic_name, 0): 95, (topic_name, 1): 96})  # settles the one out first
        assert source.commit_result() is True
        assert source.committed() == {(topic_name, 0): 95, (topic_name, 1): 96}
        source.commit_nowait({(topic_name, 7): 1})  # a partition it does not own: refused
        with pytest.raises(SourceError):
            source.commit_result(wait=True)
        assert source.commit_result() is True  # reported once
    finally:
        source.close()
    assert _group_committed(kafka_bootstrap, topic_name, f"{topic_name}-g", 2) == {0: 95, 1: 96}


def test_a_revoke_settles_the_commit_still_out_at_once(kafka_bootstrap, topic_name):
    """A commit sent without waiting during the revoke work (the pipeline's periodic checkpoint
    can send one while it finishes the steps in flight) is answered at once, not after the
    30 s reply timeout, so the synchronous commit after it goes through and the group moves on.
    """
    _fill(kafka_bootstrap, topic_name, 2, 300)
    group = f"{topic_name}-g"
    a = KafkaSource(_config(kafka_bootstrap, topic_name, group))
    handed: dict = {}
    took: list[float] = []

    def on_revoke(tps):
        started = time.monotonic()
        a.commit_nowait({tp: handed[tp] - 1 for tp in tps if tp in handed})
        a.commit({tp: handed[tp] for tp in tps if tp in handed})  # settles the one still out
        took.append(time.monotonic() - started)

    a.set_rebalance_hooks(on_revoke, None)
    b = None
    stop = threading.Event()
    try:
        for r in _poll_until(a, 600):
            handed[r.tp] = r.offset + 1
        poller = threading.Thread(target=lambda: [a.poll(0.1) for _ in iter(stop.is_set, True)])
        poller.start()
        b = KafkaSource(_config(kafka_bootstrap, topic_name, group))
        deadline = time.monotonic() + 90
        while not took and time.monotonic() < deadline:
            b.poll(0.2)
        stop.set()
        poller.join(timeout=30)
    finally:
        stop.set()
        a.close()
        if b is not None:
            b.close()
    assert took and took[0] < 10.0, took
    assert _group_committed(kafka_bootstrap, topic_name, group, 2) == {0: 300, 1: 300}


def test_pause_returns_nothing_and_resume_reads_on(kafka_bootstrap, topic_name):
    _fill(kafka_bootstrap, topic_name, 2, 2000)
    source = KafkaSource(_config(kafka_bootstrap, topic_name))
    try:
        got = _poll_until(source, 10)
        source.pause()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert source.poll(0.1) == []
        source.resume()
        got = _poll_until(source, 4000, out=got)
    finally:
        source.close()
    assert _offsets_by_partition(got) == {0: list(range(2000)), 1: list(range(2000))}


def test_a_member_without_partitions_waits_in_poll(kafka_bootstrap, topic_name):
    """Two members, one partition: the idle one's poll waits its timeout instead of spinning."""
    _fill(kafka_bootstrap, topic_name, 1, 10)
    group = f"{topic_name}-g"
    first = KafkaSource(_config(kafka_bootstrap, topic_name, group))
    second = KafkaSource(_config(kafka_bootstrap, topic_name, group))
    stop = threading.Event()

    def member(source: KafkaSource) -> None:  # each member polls on its own, as in a sidecar
        while not stop.is_set():
            source.poll(0.1)

    # a poll awaits a rebalance until the assignment, so the members need a thread each
    threads = [threading.Thread(target=member, args=(s,), daemon=True) for s in (first, second)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        settled_since = None
        while settled_since is None or time.monotonic() - settled_since < 3.0:
            assert time.monotonic() < deadline, "the group never settled"
            time.sleep(0.1)
            if first.has_assignment() != second.has_assignment():
                settled_since = settled_since or time.monotonic()
            else:
                settled_since = None
        stop.set()
        for t in threads:
            t.join(timeout=30)
        idle = second if first.has_assignment() else first
        wall, cpu = time.monotonic(), time.process_time()
        for _ in range(10):
            assert idle.poll(0.2) == []
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        assert not idle.has_assignment()
        assert wall >= 1.5, f"10 polls of 0.2 s returned after {wall:.2f} s: a busy loop"
        assert cpu < 1.0, f"10 idle polls used {cpu:.2f} CPU s: a busy loop"
    finally:
        first.close()
        second.close()
