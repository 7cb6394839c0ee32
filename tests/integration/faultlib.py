"""Fault-injection harness: a seeded feeder, sidecar processes to kill, and the ledger check.

Used by ``test_faults_kafka.py`` (a few seeded trials in the suite) and runnable by hand for
many more::

    python -m tests.integration.faultlib kill --trials 100 --seed 7
    python -m tests.integration.faultlib mining --trials 100 --seed 7

The check is always the same: the ledgers of the final checkpoints (one per sidecar) cover
every offset of the topic exactly once, and the events they trained on are exactly the valid,
first-seen events that were produced — compared by count and by an order-independent digest of
their ids. With pair mining (``mining``: thumbs written in pairs, :class:`PairFeeder`), also
the mined pairs: every pair the stream holds was trained exactly once (:func:`verify_pairs`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from learner.checkpoint import CheckpointManager
from streaming.ingest.mining import MinerState
from streaming.ingest.offsets import (
    DIGEST_KIND,
    Ledger,
    check_ledgers,
    event_digest,
    pair_digest,
)
from streaming.testing.simulate import SimulatedFeedback

REPO = Path(__file__).resolve().parents[2]

MALFORMED = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'{"event_id": "x", "ts": "yesterday", "prompt": "p", "response": "r", '
    b'"feedback": {"type": "thumb", "value": 1}}',
    b'{"event_id": "y", "ts": "2026-11-28T10:00:00Z", "prompt": "p", "response": "r", '
    b'"feedback": {"type": "rating", "value": 9}}',
]


@dataclass
class Produced:
    """What the feeder wrote: per message its partition, offset and event id (None if invalid).

    ``pairs``: the preference pairs the stream holds (:class:`PairFeeder`), each as
    ``(chosen event id, rejected event id)``; empty for the plain :class:`Feeder`.
    """

    topic: str
    partitions: int
    messages: list[tuple[int, int, str | None]] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def expected_ids(self, ends: dict[int, int] | None = None) -> list[str]:
        """First-seen valid event ids below ``ends`` (per partition; all when None)."""
        seen: set[str] = set()
        out = []
        for partition, offset, event_id in sorted(self.messages):
            if event_id is None or event_id in seen:
                continue
            if ends is not None and offset >= ends.get(partition, 0):
                continue
            seen.add(event_id)
            out.append(event_id)
        return out

    def ends(self) -> dict[int, int]:
        """Next offset per partition after everything produced."""
        out = {p: 0 for p in range(self.partitions)}
        for partition, offset, _ in self.messages:
            out[partition] = max(out[partition], offset + 1)
        return out


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication 1)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


class Feeder:
    """Writes a seeded mix of valid events, malformed payloads and redeliveries to a topic.

    Every 17th message is malformed and every 23rd repeats a recent valid event (same id and
    key, so it lands on the same partition after the original). Keys are event ids.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, seed: int) -> None:
        self.produced = Produced(topic, partitions)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._gen = SimulatedFeedback(seed=seed)
        self._rng = random.Random(seed)
        self._i = 0
        self._recent: list[tuple[bytes, bytes, str]] = []  # payload, key, event id
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _next(self) -> tuple[bytes, bytes | None, str | None]:
        self._i += 1
        if self._i % 17 == 0:
            payload = self._rng.choice(MALFORMED)
            return payload, str(self._i).encode(), None
        if self._i % 23 == 0 and self._recent:
            payload, key, event_id = self._rng.choice(self._recent[-20:])
            return payload, key, event_id
        event, key = self._valid()
        event_id = str(event["event_id"])
        payload = json.dumps(event, separators=(",", ":")).encode()
        self._recent.append((payload, key, event_id))
        return payload, key, event_id

    def _valid(self) -> tuple[dict[str, Any], bytes]:
        """The next valid event and its message key."""
        event = self._gen.event(self._i)
        return event, str(event["event_id"]).encode()

    def produce(self, n: int) -> None:
        """Write ``n`` messages now and wait for their offsets."""
        pending = []
        with self._lock:
            for _ in range(n):
                payload, key, event_id = self._next()
                fut = self._producer.send(self.produced.topic, value=payload, key=key)
                pending.append((fut, event_id))
            self._producer.flush()
            for fut, event_id in pending:
                meta = fut.get(timeout=30)
                self.produced.messages.append((meta.partition, meta.offset, event_id))

    def start(self, rate: float, chunk: int = 10) -> None:
        """Keep producing about ``rate`` messages per second until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                self.produce(chunk)
                self._stop.wait(max(0.0, chunk / rate - (time.monotonic() - started)))

        self._thread = threading.Thread(target=loop, name="feeder", daemon=True)
        self._thread.start()

    def stop(self) -> Produced:
        """Stop the background feeder (if any) and return what was written."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._finish()
        self._producer.flush()
        self._producer.close()
        return self.produced

    def _finish(self) -> None:
        """Write what must follow before the stream ends (nothing here)."""


class PairFeeder(Feeder):
    """Like :class:`Feeder`, but every valid event is one half of a thumbs pair.

    Each conversation gets two events on one prompt (same ``conversation_id``, different
    replies), one thumb up and one down in a seeded order, ``1..gap`` messages apart; messages
    are keyed by conversation, so both halves land on one partition. Malformed payloads and
    redeliveries are mixed in as by :class:`Feeder` (a redelivery keeps its original's key).
    :meth:`stop` writes the second halves still due, so every pair is complete; the pairs are in
    ``produced.pairs`` as ``(thumb-up event id, thumb-down event id)``.
    """

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, seed: int, gap: int = 10
    ) -> None:
        super().__init__(bootstrap, topic, partitions, seed)
        self.gap = gap
        self._open: list[tuple[int, dict[str, Any]]] = []  # second halves: (due at, event)
        self._conversations = 0
        self._closing = False

    def _valid(self) -> tuple[dict[str, Any], bytes]:
        if self._open and (self._closing or self._open[0][0] <= self._i):
            event = self._open.pop(0)[1]
        else:
            n = self._conversations = self._conversations + 1
            up_first = self._rng.random() < 0.5
            first, second = (self._half(n, up) for up in (up_first, not up_first))
            up, down = (first, second) if up_first else (second, first)
            self.produced.pairs.append((str(up["event_id"]), str(down["event_id"])))
            self._open.append((self._i + self._rng.randint(1, self.gap), second))
            self._open.sort(key=lambda due: due[0])
            event = first
        event["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return event, str(event["conversation_id"]).encode()

    def _half(self, n: int, up: bool) -> dict[str, Any]:
        return {
            "event_id": str(uuid.UUID(int=self._rng.getrandbits(128))),
            "prompt": f"question {n}",
            "response": f"{'a good' if up else 'a bad'} answer to {n}",
            "conversation_id": f"conv-{n}",
            "feedback": {"type": "thumb", "value": 1 if up else -1},
        }

    def _finish(self) -> None:
        self._closing = True
        while self._open:
            self.produce(len(self._open))


def write_config(path: Path, **values: Any) -> Path:
    """A TOML config file for ``feedstep run``."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def sidecar_config(
    path: Path, bootstrap: str, topic: str, group: str, store: Path, **overrides: Any
) -> Path:
    """The fault tests' sidecar: tiny model, small batches, a checkpoint every 2 steps."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "group_id": group,
        "model": "tiny",
        "max_length": 32,
        "batch_size": 8,
        "max_wait_ms": 100,
        "checkpoint_every_steps": 2,
        "checkpoint_keep": 2,
        "checkpoint_every_s": 2.0,
        "store": str(store),
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "session_timeout_ms": 10_000,
        "gate_min_events": 10**9,
        "stop_when_idle_s": 4.0,
        "log_every_s": 2.0,
        "shutdown_timeout_s": 10.0,
        "reconnect_backoff_max_ms": 1000,
    }
    values.update(overrides)
    return write_config(path, **values)


def scrape_metrics(port: int) -> dict[str, float]:
    """Every ``feedstep_*`` sample of a sidecar's /metrics, by its name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("feedstep_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def run_argv(bootstrap: str, topic: str, group: str) -> list[str]:
    """The start of a ``feedstep run`` command line against ``topic`` as ``group``."""
    return [sys.executable, "-m", "streaming.cli", "run", "--bootstrap-servers", bootstrap,
            "--topic", topic, "--group-id", group]  # fmt: skip


class Sidecar:
    """One ``feedstep run`` process; its stderr is kept (and searchable) while it runs."""

    def __init__(
        self, config: Path, name: str = "sidecar", log: Path | None = None, verb: str = "run"
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDSTEP_")}
        self.name = name
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streaming.cli", verb, "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.log = log
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out: list[str] = []
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        fh = open(self.log, "a") if self.log is not None else None  # noqa: SIM115
        try:
            for line in self.proc.stderr:
                if fh is not None:
                    fh.write(line)
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        finally:
            if fh is not None:
                fh.close()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.append(line)

    @property
    def stdout(self) -> str:
        """What the process printed on stdout so far (its summary line at the end)."""
        return "".join(self._out)

    def wait_for(self, pattern: str, timeout: float = 120.0, since: int = 0) -> re.Match[str]:
        """Block until a stderr line matches ``pattern``; fail if the process ends first.

        ``since``: look only at lines after the first ``since`` ones (see :meth:`mark`).
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = since
        with self._cond:
            while True:
                for line in self.lines[checked:]:
                    m = rx.search(line)
                    if m:
                        return m
                checked = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before {pattern!r}:\n"
                        + self.tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name}: no {pattern!r} in {timeout} s:\n" + self.tail()
                    )
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        """How many stderr lines were read so far (for ``wait_for(..., since=mark)``)."""
        with self._cond:
            return len(self.lines)

    def metrics_port(self) -> int:
        """The port the sidecar serves /metrics and /readyz on."""
        return int(self.wait_for(r"metrics on http://[^:]+:(\d+)/metrics").group(1))

    def kill9(self) -> None:
        """SIGKILL: no step finished, nothing flushed, no goodbye to the group."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: the graceful path."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the exit status (killing the process if it overruns)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s:\n" + self.tail()
            ) from None
        self._reader.join(timeout=10)
        self._out_reader.join(timeout=10)
        return int(self.proc.returncode)

    def tail(self, n: int = 40) -> str:
        """The last ``n`` stderr lines."""
        return "\n".join(self.lines[-n:])


def final_checkpoint(store: Path) -> tuple[Path, int, dict[str, Any]]:
    """``(path, step, extra)`` of the checkpoint a restart would resume from."""
    found = CheckpointManager(store / "checkpoints").latest_extra()
    if found is None:
        raise AssertionError(f"no intact checkpoint under {store / 'checkpoints'}")
    return found


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (missing partitions are left out)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        out = {}
        for p in range(partitions):
            off = consumer.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = int(off)
        return out
    finally:
        consumer.close(autocommit=False)


def verify(
    ledgers: Iterable[Ledger], produced: Produced, ends: dict[int, int] | None = None
) -> list[str]:
    """Problems with ``ledgers`` against what was produced (up to ``ends``, default all)."""
    ledgers = list(ledgers)
    ends = produced.ends() if ends is None else ends
    problems = check_ledgers(ledgers, {(produced.topic, p): e for p, e in ends.items()})
    expected = produced.expected_ids(ends)
    trained = sum(ledger.trained for ledger in ledgers)  # skipped steps' events are in it
    if trained != len(expected):
        problems.append(f"{trained} events applied, expected {len(expected)} valid first-seen ones")
    digest = sum(ledger.digest for ledger in ledgers) % (1 << 64)
    kinds = {ledger.digest_kind for ledger in ledgers}
    if kinds != {DIGEST_KIND}:
        problems.append(f"ledger digests made with {sorted(kinds)}, not {DIGEST_KIND}")
    elif digest != event_digest(expected):
        problems.append("the digest of applied event ids differs from the produced valid ids")
    return problems


def verify_pairs(ledgers: Iterable[Ledger], produced: Produced) -> list[str]:
    """Problems with the mined pairs of ``ledgers``: every produced pair applied exactly once.

    Compared by count and by the order-independent digest of the pairs' ids (chosen, then
    rejected), over everything produced (call it once the topic is drained). A pair of a
    skipped step counts as applied, as its events do in :func:`verify`.
    """
    ledgers = list(ledgers)
    problems = []
    applied = sum(ledger.pairs for ledger in ledgers)
    if applied != len(produced.pairs):
        problems.append(
            f"{applied} mined pairs applied, expected each of the {len(produced.pairs)} "
            "produced pairs once"
        )
    digest = sum(ledger.pair_digest for ledger in ledgers) % (1 << 64)
    if digest != pair_digest(produced.pairs):
        problems.append("the digest of applied pairs differs from the produced pairs")
    return problems


def held_in(store: Path) -> int:
    """Thumbs the miner holds back in a store's final checkpoint (0 when it has none)."""
    found = CheckpointManager(store / "checkpoints").latest_extra()
    mining = found[2].get("mining") if found is not None else None
    return MinerState.from_json(mining).held if mining is not None else 0


def ledger_of(store: Path) -> Ledger:
    """The ledger in the final checkpoint of a sidecar's store."""
    return Ledger.from_json(final_checkpoint(store)[2].get("ledger"))


# -- scenarios ---------------------------------------------------------------------------------
def kill_trials(
    bootstrap: str, topic: str, workdir: Path, trials: int, seed: int, rate: float = 120.0
) -> tuple[Produced, Sidecar, list[float]]:
    """Kill -9 a sidecar ``trials`` times at seeded random moments while events arrive, then
    let a last one drain the topic. Returns what was produced, the last sidecar, kill delays."""
    partitions = 3
    create_topic(bootstrap, topic, partitions)
    feeder = Feeder(bootstrap, topic, partitions, seed)
    config = _kill_config(bootstrap, topic, workdir)
    produced, last, delays, _ = _kill_and_drain(config, feeder, workdir, trials, seed, rate)
    return produced, last, delays


def mining_kill_trials(
    bootstrap: str, topic: str, workdir: Path, trials: int, seed: int, rate: float = 120.0
) -> tuple[Produced, Sidecar, list[int]]:
    """:func:`kill_trials` with pair mining ``replace`` over thumbs written in pairs
    (:class:`PairFeeder`). The windows are wide enough that every pair of the stream forms.

    Returns what was produced (``produced.pairs``: the pairs), the last sidecar, and per kill
    how many thumbs the checkpoint the next sidecar resumes from holds back for their partner.
    """
    partitions = 3
    create_topic(bootstrap, topic, partitions)
    feeder = PairFeeder(bootstrap, topic, partitions, seed)
    config = _kill_config(
        bootstrap,
        topic,
        workdir,
        mining="replace",
        mining_window_events=10_000,
        mining_window_s=3600.0,
        mining_max_pending=10_000,
    )
    produced, last, _, held = _kill_and_drain(config, feeder, workdir, trials, seed, rate)
    return produced, last, held


def _kill_config(bootstrap: str, topic: str, workdir: Path, **overrides: Any) -> Path:
    return sidecar_config(
        workdir / "sidecar.toml",
        bootstrap,
        topic,
        f"{topic}-group",
        workdir / "store",
        group_instance_id=f"{topic}-0",
        **overrides,
    )


def _kill_and_drain(
    config: Path, feeder: Feeder, workdir: Path, trials: int, seed: int, rate: float
) -> tuple[Produced, Sidecar, list[float], list[int]]:
    """Start ``feeder``; ``trials`` times start a sidecar and kill -9 it after a seeded delay;
    stop the feeder and start the last sidecar. Also returns the held thumbs at each kill."""
    rng = random.Random(seed)
    feeder.start(rate)
    delays, held = [], []
    try:
        for trial in range(trials):
            sidecar = Sidecar(config, f"sidecar try {trial}", workdir / f"try-{trial}.log")
            sidecar.wait_for(r"partitions assigned: \[\(")
            delay = rng.uniform(0.2, 3.0)
            delays.append(delay)
            time.sleep(delay)
            sidecar.kill9()
            held.append(held_in(workdir / "store"))
    finally:
        produced = feeder.stop()
    last = Sidecar(config, "sidecar drain", workdir / "drain.log")
    return produced, last, delays, held


class LocalBroker:
    """A second Kafka broker (deploy/local/kafka.sh on another port) that a test may stop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(port + 1)}

    def _run(self, verb: str, **env: str) -> None:
        subprocess.run(
            [str(REPO / "deploy" / "local" / "kafka.sh"), verb],
            env={**self._env, **env},
            check=True,
            capture_output=True,
            timeout=180,
        )

    def start(self, fresh: bool = False) -> None:
        """Start it (a fresh, empty cluster with ``fresh``); returns once it answers."""
        self._run("start", **({"KAFKA_RESET": "1"} if fresh else {}))

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after the script's timeout); data is kept."""
        self._run("stop")


def http_status(url: str) -> tuple[int, str]:
    """``(status, body)`` of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_until(what: str, check: Any, timeout: float, every: float = 0.3) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["kill", "mining"])
    parser.add_argument("--bootstrap", default="127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092"))
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="feedstep-faults-"))
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    if args.scenario == "mining":
        produced, last, _ = mining_kill_trials(
            args.bootstrap, topic, workdir, args.trials, args.seed
        )
    else:
        produced, last, _ = kill_trials(args.bootstrap, topic, workdir, args.trials, args.seed)
    rc = last.wait(timeout=300)
    ledger = ledger_of(workdir / "store")
    problems = verify([ledger], produced)
    if args.scenario == "mining":
        problems += verify_pairs([ledger], produced)
    print(
        f"scenario={args.scenario} trials={args.trials} seed={args.seed} "
        f"produced={len(produced.messages)} valid={len(produced.expected_ids())} "
        f"pairs={len(produced.pairs)} exit={rc} problems={len(problems)} "
        f"elapsed_s={time.monotonic() - started:.0f} workdir={workdir}"
    )
    for problem in problems:
        print("  " + problem)
    return 0 if rc == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(_main())
