"""Fault-injection harness: a seeded feeder, sidecar processes to kill, and the ledger check.

Used by ``test_faults_kafka.py`` (a few seeded trials in the suite) and runnable by hand for
many more::

    python -m tests.integration.faultlib kill --trials 100 --seed 7
    python -m tests.integration.faultlib leave --seed 3

The check is always the same: the ledgers of the final checkpoints (one per sidecar) cover
every offset of the topic exactly once, and the events they trained on are exactly the valid,
first-seen events that were produced — compared by count and by an order-independent digest of
their ids.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from learner.checkpoint import CheckpointManager
from streaming.ingest.offsets import DIGEST_KIND, Ledger, check_ledgers, event_digest
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
    """What the feeder wrote: per message its partition, offset and event id (None if invalid)."""

    topic: str
    partitions: int
    messages: list[tuple[int, int, str | None]] = field(default_factory=list)

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
        self._recent: list[tuple[bytes, str]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _next(self) -> tuple[bytes, bytes | None, str | None]:
        self._i += 1
        if self._i % 17 == 0:
            payload = self._rng.choice(MALFORMED)
            return payload, str(self._i).encode(), None
        if self._i % 23 == 0 and self._recent:
            payload, event_id = self._rng.choice(self._recent[-20:])
            return payload, event_id.encode(), event_id
        event = self._gen.event(self._i)
        event_id = str(event["event_id"])
        payload = json.dumps(event, separators=(",", ":")).encode()
        self._recent.append((payload, event_id))
        return payload, event_id.encode(), event_id

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
        self._producer.flush()
        self._producer.close()
        return self.produced


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
    trained = sum(ledger.trained + ledger.skipped for ledger in ledgers)
    if trained != len(expected):
        problems.append(f"{trained} events applied, expected {len(expected)} valid first-seen ones")
    digest = sum(ledger.digest for ledger in ledgers) % (1 << 64)
    kinds = {ledger.digest_kind for ledger in ledgers}
    if kinds != {DIGEST_KIND}:
        problems.append(f"ledger digests made with {sorted(kinds)}, not {DIGEST_KIND}")
    elif digest != event_digest(expected):
        problems.append("the digest of applied event ids differs from the produced valid ids")
    return problems


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
    rng = random.Random(seed)
    store = workdir / "store"
    config = sidecar_config(
        workdir / "sidecar.toml",
        bootstrap,
        topic,
        f"{topic}-group",
        store,
        group_instance_id=f"{topic}-0",
    )
    feeder = Feeder(bootstrap, topic, partitions, seed)
    feeder.start(rate)
    delays = []
    try:
        for trial in range(trials):
            sidecar = Sidecar(config, f"sidecar try {trial}", workdir / f"try-{trial}.log")
            sidecar.wait_for(r"partitions assigned: \[\(")
            delay = rng.uniform(0.2, 3.0)
            delays.append(delay)
            time.sleep(delay)
            sidecar.kill9()
    finally:
        produced = feeder.stop()
    last = Sidecar(config, "sidecar drain", workdir / "drain.log")
    return produced, last, delays


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
    parser.add_argument("scenario", choices=["kill"])
    parser.add_argument("--bootstrap", default="127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092"))
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import tempfile
    import uuid

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="feedstep-faults-"))
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    produced, last, delays = kill_trials(args.bootstrap, topic, workdir, args.trials, args.seed)
    rc = last.wait(timeout=300)
    problems = verify([ledger_of(workdir / "store")], produced)
    print(
        f"scenario=kill trials={args.trials} seed={args.seed} produced={len(produced.messages)} "
        f"valid={len(produced.expected_ids())} exit={rc} problems={len(problems)} "
        f"elapsed_s={time.monotonic() - started:.0f} workdir={workdir}"
    )
    for problem in problems:
        print("  " + problem)
    return 0 if rc == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(_main())
