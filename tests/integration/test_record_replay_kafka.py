"""`feedstep record`, `produce` of a recording and `replay kafka:TOPIC` against the real broker."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from streaming import cli
from streaming.sources.recording import read_recording
from streaming.testing.simulate import SimulatedFeedback

pytestmark = pytest.mark.integration

PARTITIONS = 3
BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
KEYS = [f"c{i}".encode() for i in range(6)]
MALFORMED = b"\xff\xfe{not json, not utf-8"


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _create(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def _consume_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list = []
    for _ in range(60):
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
        if len(out) >= expected:
            break
    consumer.close()
    return out


def _assert_nothing_committed(bootstrap: str, topic: str) -> None:
    view = KafkaConsumer(bootstrap_servers=bootstrap, group_id="feedstep", enable_auto_commit=False)
    try:
        assert all(view.committed(TopicPartition(topic, p)) is None for p in range(PARTITIONS))
    finally:
        view.close()


@pytest.fixture()
def produced(kafka_bootstrap, topic_name):
    """N events with keys over 3 partitions, one malformed, timestamps BASE_MS + i seconds."""
    _create(kafka_bootstrap, topic_name)
    payloads = list(SimulatedFeedback(seed=11).payloads(120))
    payloads.insert(37, MALFORMED)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    futures = []
    for i, value in enumerate(payloads):
        k = i % len(KEYS)
        headers = [("origin", b"test"), ("seq", str(i).encode())] if i % 5 == 0 else []
        fut = producer.send(
            topic_name,
            value=value,
            key=KEYS[k],
            partition=k % PARTITIONS,
            timestamp_ms=BASE_MS + 1000 * i,
            headers=headers,
        )
        futures.append((fut, i, value, KEYS[k], headers))
    producer.flush()
    sent = {}
    for fut, i, value, key, headers in futures:
        md = fut.get(timeout=30)
        sent[(md.partition, md.offset)] = (i, value, key, headers)
    producer.close()
    assert {p for p, _ in sent} == set(range(PARTITIONS))
    return topic_name, sent


def _record(capsys, bootstrap, topic, out, *extra):
    code = cli.main(
        ["record", "--topic", topic, "--out", str(out), "--bootstrap-servers", bootstrap, *extra]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    return stdout.strip().splitlines()[-1], err


def test_record_dumps_every_record_losslessly(kafka_bootstrap, produced, tmp_path, capsys):
    topic, sent = produced
    out = tmp_path / "rec.jsonl"
    closing, err = _record(capsys, kafka_bootstrap, topic, out)
    assert closing == f"recorded=121 topic={topic} partitions=0,1,2 out={out}"
    assert "recorded from" in err  # progress on stderr

    lines = out.read_text().splitlines()
    assert len(lines) == 121
    for line in lines:
        obj = json.loads(line)
        assert {"partition", "offset", "timestamp_ms", "key", "headers"} <= set(obj)
    records = list(read_recording(out))
    assert {(r.partition, r.offset) for r in records} == set(sent)
    for r in records:
        i, value, key, headers = sent[(r.partition, r.offset)]
        assert r.value == value  # byte for byte, the malformed record included
        assert r.key == key and r.topic == topic
        assert r.timestamp_ms == BASE_MS + 1000 * i
        assert list(r.headers) == headers
    malformed = [json.loads(x) for x in lines if "value_b64" in json.loads(x)]
    assert len(malformed) == 1
    # Per partition the file is in offset order.
    for p in range(PARTITIONS):
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == sorted(offsets)

    # record reads with assign(): the configured group ("feedstep") committed nothing.
    _assert_nothing_committed(kafka_bootstrap, topic)


def test_record_time_slice_and_partitions(kafka_bootstrap, produced, tmp_path, capsys):
    topic, sent = produced
    out = tmp_path / "slice.jsonl"
    start, end = BASE_MS + 30_000, BASE_MS + 80_000
    closing, _ = _record(
        capsys, kafka_bootstrap, topic, out, "--from-time", _rfc3339(start), "--to-time", str(end)
    )
    records = list(read_recording(out))
    want = {pos for pos, (i, *_rest) in sent.items() if start <= BASE_MS + 1000 * i < end}
    assert {(r.partition, r.offset) for r in records} == want and len(want) == 50
    assert closing.startswith(f"recorded=50 topic={topic} partitions=0,1,2")

    out2 = tmp_path / "p2.jsonl"
    closing, _ = _record(
        capsys, kafka_bootstrap, topic, out2, "--partitions", "2", "--from-offset", "10"
    )
    records = list(read_recording(out2))
    want = {pos for pos in sent if pos[0] == 2 and pos[1] >= 10}
    assert {(r.partition, r.offset) for r in records} == want
    assert closing.startswith(f"recorded={len(want)} topic={topic} partitions=2 ")


def test_record_of_a_missing_topic_is_an_error(kafka_bootstrap, topic_name, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code = cli.main(
        ["record", "--topic", topic_name, "--out", str(out), "--bootstrap-servers", kafka_bootstrap]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"topic {topic_name!r} does not exist" in err
    assert not out.exists()


def test_produce_recording_preserves_keys_and_per_key_order(
    kafka_bootstrap, produced, tmp_path, capsys
):
    topic, sent = produced
    out = tmp_path / "rec.jsonl"
    _record(capsys, kafka_bootstrap, topic, out)
    target = f"{topic}-copy"
    _create(kafka_bootstrap, target)
    code = cli.main(
        [
            "produce",
            str(out),
            "--topic",
            target,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--speed",
            "400",  # 120 s of recorded gaps in 0.3 s
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == (
        f"produced=121 topic={target} format=recording speed=400x"
    )

    copied = _consume_all(kafka_bootstrap, target, 121)
    assert len(copied) == 121
    original_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for _pos, (_i, value, key, _h) in sorted(sent.items(), key=lambda kv: kv[1][0]):
        original_by_key[key].append(value)
    copied_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for msg in sorted(copied, key=lambda m: (m.partition, m.offset)):
        copied_by_key[msg.key].append(msg.value)
        partitions_of_key[msg.key].add(msg.partition)
    assert copied_by_key == original_by_key  # same keys, same values, same order per key
    assert all(len(ps) == 1 for ps in partitions_of_key.values())
    assert MALFORMED in {m.value for m in copied}
    seqs = [dict(m.headers).get("seq") for m in copied if m.headers]
    assert len(seqs) == 25  # headers travel too


def test_replay_topic_range_writes_report_and_commits_nothing(
    kafka_bootstrap, produced, tmp_path, capsys, monkeypatch
):
    topic, _ = produced
    monkeypatch.chdir(tmp_path)
    report_dir = tmp_path / "report"
    code = cli.main(
        [
            "replay",
            f"kafka:{topic}",
            "--report",
            str(report_dir),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--to-time",
            str(BASE_MS + 100_000),
            "--model",
            "tiny",
            "--batch-size",
            "16",
            "--gate-min-events",
            "50",
            "--drift-quiet-events",
            "0",
            "--lr",
            "1e-3",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((report_dir / "report.json").read_text())
    assert report["source"]["kind"] == "kafka" and report["source"]["topic"] == topic
    assert sum(r["end_offset"] - r["start_offset"] for r in report["source"]["ranges"]) == 100
    s = report["summary"]
    assert s["events"] == 100 and s["dead_lettered"] == 1 and s["accepted"] == 99
    assert report["complete"] is True
    assert len(report["gate_decisions"]) == s["steps"] > 0
    assert (report_dir / "gate_statistic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.strip().splitlines()[-1].startswith("replayed events=100 accepted=99")
    assert not (tmp_path / "feedstep-store").exists()

    # Dry run: nothing was dead-lettered to Kafka and no model update was announced.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    topics = set(admin.list_topics())
    admin.close()
    assert f"{topic}.dlq" not in topics
    _assert_nothing_committed(kafka_bootstrap, topic)
