"""The Kafka consumer in its own process, so fetching runs beside the pipeline, not inside it.

kafka-python spends most of its time in Python (parsing record batches, checking CRCs); in
one process that time and the pipeline's (decode, validate, de-duplicate, batch) share one
interpreter lock and add up. :class:`FetcherSource` runs a :class:`~streaming.kafka.KafkaSource`
in a child process (``python -m streaming.fetcher``) and talks to it over two pipes:

* child → parent: frames ``<type:u8><length:u32><body>``. ``D`` carries records (MessagePack,
  column by column, below), ``E`` a rebalance event, ``R`` a reply to a command, ``S`` the client's
  state (connection, assignment, high-water marks; every half second), ``Y`` ready, ``X`` fatal.
* parent → child: commands ``<length:u32><JSON>``: ``credit``, ``seek``, ``commit``,
  ``read_back``, ``predecode``, ``done`` (a revoke has been handled) and ``close``.

Decoding beside the pipeline: after ``predecode`` (:meth:`FetcherSource.predecode`, which the
pipeline calls as it starts) the child also runs ``streaming.plain.plain_values`` on every value
it sends, with the pipeline's limits, and ships the result (false for a value that needs the
complete decoder) in a column of its own. The pipeline then skips that work for
those records: the two processes split the per-event cost instead of the pipeline carrying
all of it. Every ``predecode`` bumps a number carried by each ``D`` frame; decoded columns of
frames sent under older limits are ignored.

Nothing crosses the pipes as pickle; bodies are JSON or MessagePack.

Flow control: the child sends a ``D`` frame (one poll, at most ``max_poll_records`` records) only
while it holds a credit; the parent returns one credit per frame it takes. Out of credit for a
second, the child pauses its partitions and keeps polling, so the member stays in its group
however slow the pipeline is, and memory stays bounded by ``prefetch_polls`` polls.

Rebalances keep the in-process guarantees: on revoke the child sends ``E`` and waits — the
client's IO loop keeps heartbeating — while serving commands, until the parent has taken every
record sent before the event, run its revoke hook (finish steps, checkpoint, commit through the
child) and answered ``done``. Every seek bumps a generation number carried by each ``D`` frame; the
parent drops records of a sought partition from frames older than the seek.

The child ignores SIGINT/SIGTERM (the parent shuts it down in order) and leaves the group and
exits when the parent closes it or dies (its stdin reaches end of file).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson

from streaming.base import Record, Source, TopicPartition
from streaming.config import FeedstepConfig
from streaming.errors import BrokerUnavailable, CommitRejected, SourceBusy, SourceError
from streaming.events import DecodeLimits
from streaming.plain import plain_values

log = logging.getLogger(__name__)

# child -> parent frame types
DATA, EVENT, REPLY, STATE, READY, FATAL = b"D", b"E", b"R", b"S", b"Y", b"X"
_FRAME = struct.Struct("<cI")
_CMD = struct.Struct("<I")
# D body (MessagePack): [generation, decode generation, [group, ...]], one group per
# partition, column by column: [topic, partition, [offset...], [timestamp ms or nil...],
# [key or nil...], [value or nil...], [[[header name, header value]...] per record] or nil when
# no record has headers, [plain_values(...) or false per record] or nil when not predecoding].
# Columns cost a list comprehension each to build and one C call to pack and unpack.
_Group = tuple[
    str,
    int,
    list[int],
    list[int | None],
    list[bytes | None],
    list[bytes | None],
    list[tuple[tuple[str, bytes], ...]] | None,
    list[Any] | None,
]
_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder(tuple[int, int, list[_Group]]).decode
_ERRORS: dict[str, type[SourceError]] = {
    "BrokerUnavailable": BrokerUnavailable,
    "CommitRejected": CommitRejected,
}


def _reply_error(reply: dict[str, Any]) -> SourceError:
    """The exception a failed command's reply stands for."""
    return _ERRORS.get(reply.get("kind", ""), SourceError)(reply["error"])


def encode_records(
    generation: int,
    batches: Mapping[Any, list[Any]],
    limits: DecodeLimits | None = None,
    decode_generation: int = 0,
) -> bytes:
    """A ``D`` body from kafka-python's ``poll()`` result (``{TopicPartition: [records]}``).

    With ``limits``, each group also carries its values' ``plain_values(value, limits)``
    (false where that is None), under ``decode_generation``.
    """
    groups = []
    for tp, records in batches.items():
        headers = None
        if any(r.headers for r in records):
            headers = [tuple((k, v or b"") for k, v in r.headers) for r in records]
        values = [r.value for r in records]
        decoded = None
        if limits is not None:
            decoded = [plain_values(v, limits) or False for v in values]
        groups.append(
            (
                tp.topic,
                tp.partition,
                [r.offset for r in records],
                [r.timestamp for r in records],
                [r.key for r in records],
                values,
                headers,
                decoded,
            )
        )
    try:
        return _PACK((generation, decode_generation, groups))
    except UnicodeEncodeError:  # a decoded text with a lone surrogate: the parent decodes all
        return _PACK((generation, decode_generation, [g[:7] + (None,) for g in groups]))


def decode_records(
    body: bytes,
    stale: Callable[[TopicPartition, int], bool] | None = None,
    ends: dict[TopicPartition, int] | None = None,
    decode_generation: int | None = None,
) -> list[Record]:
    """The records of a ``D`` body, skipping partitions for which ``stale(tp, generation)``.

    ``ends``, when given, receives the next offset after the last record of each partition kept.
    Decoded columns become :attr:`Record.decoded` only when the frame was encoded under
    ``decode_generation``.
    """
    generation, decoded_under, groups = _UNPACK(body)
    out: list[Record] = []
    repeat = itertools.repeat
    for topic, partition, offsets, stamps, keys, values, headers, decoded in groups:
        if not offsets or (stale is not None and stale((topic, partition), generation)):
            continue
        n = len(offsets)
        if decoded is None or decoded_under != decode_generation:
            decoded = repeat(None, n)  # type: ignore[assignment]
        out.extend(
            map(
                Record,
                repeat(topic, n),
                repeat(partition, n),
                offsets,
                keys,
                values,
                stamps,
                repeat((), n) if headers is None else headers,
                decoded,  # type: ignore[arg-type]
            )
        )
        if ends is not None:
            ends[(topic, partition)] = offsets[-1] + 1
    return out


def _grow_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let the child write a whole poll's frame without waiting for the reader (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError) as exc:  # another OS, or above /proc/sys/fs/pipe-max-size
        log.debug("could not grow the fetcher pipe: %s", exc)


def _tps(pairs: Any) -> list[TopicPartition]:
    return [(str(t), int(p)) for t, p in pairs]


def _offsets_json(offsets: Mapping[TopicPartition, int]) -> list[list[Any]]:
    return [[t, p, int(o)] for (t, p), o in offsets.items()]


def _config_json(config: FeedstepConfig) -> dict[str, Any]:
    data = config.model_dump()
    secret = config.sasl_plain_password
    data["sasl_plain_password"] = None if secret is None else secret.get_secret_value()
    return data


# -- parent side --------------------------------------------------------------------------------
class FetcherSource(Source):
    """A :class:`~streaming.kafka.KafkaSource` run in a child process (see the module doc).

    Example:
        >>> source = FetcherSource(load_config(overrides={"topic": "feedback"}))  # doctest: +SKIP
        >>> records = source.poll(timeout_s=1.0)  # doctest: +SKIP
        >>> source.close()  # doctest: +SKIP

    Raises:
        BrokerUnavailable: no broker answered when the child's consumer was created.
        SourceError: the child could not start, or exited while in use.
    """

    def __init__(
        self,
        config: FeedstepConfig,
        *,
        prefetch_polls: int = 4,
        start_timeout_s: float = 60.0,
        rpc_timeout_s: float = 60.0,
    ) -> None:
        self._rpc_timeout_s = rpc_timeout_s
        self._prefetch = prefetch_polls  # granted on the first poll: nothing is fetched before
        self._decode_generation = 0  # of the last predecode command (0: none sent)
        self._on_revoke: Callable[[list[TopicPartition]], None] | None = None
        self._on_assign: Callable[[list[TopicPartition]], None] | None = None
        self._inbox: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self._held: tuple[bytes, bytes] | None = None
        self._buffer: list[Record] = []
        self._at = 0  # next record of _buffer to hand out
        self._paused = False
        self._assignment: set[TopicPartition] = set()
        self._seek_gen: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._state: dict[str, Any] = {"connected": True, "assigned": [], "highwater": []}
        self._fatal: str | None = None
        self._rpc_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 0
        # the commit sent by commit_nowait: (id, offsets, answer due by), and its answer once in
        self._pending: tuple[int, dict[TopicPartition, int], float] | None = None
        self._pending_reply: dict[str, Any] | None = None
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "streaming.fetcher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        _grow_pipe(self._proc.stdout.fileno())
        self._stdin: IO[bytes] = self._proc.stdin
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(self._proc.stdout,),
            name="feedstep-fetcher-reader",
            daemon=True,
        )
        self._reader.start()
        level = logging.getLogger().getEffectiveLevel()
        try:
            self._send({"op": "start", "config": _config_json(config), "log_level": level})
            kind, body = self._wait_reply(start_timeout_s, "start")
            if kind == FATAL:
                info = orjson.loads(body) if body else {}
                error = _ERRORS.get(info.get("kind", ""), SourceError)
                raise error(info.get("message", "the Kafka fetcher process failed to start"))
        except BaseException:
            self._proc.kill()  # never leave a half-started child behind
            self._proc.wait()
            raise
        log.info("Kafka consumer runs in fetcher process %d", self._proc.pid)

    # -- pipes ----------------------------------------------------------------------------------
    def _read_loop(self, stdout: IO[bytes]) -> None:
        read = stdout.read
        try:
            while True:
                head = read(_FRAME.size)
                if len(head) < _FRAME.size:
                    break
                kind, length = _FRAME.unpack(head)
                body = read(length) if length else b""
                if len(body) < length:
                    break
                if kind == DATA or kind == EVENT:
                    self._inbox.put((kind, body))
                elif kind == STATE:
                    self._state = orjson.loads(body)
                elif kind == FATAL:
                    self._fatal = orjson.loads(body).get("message", "unknown error")
                    self._replies.put((kind, body))
                    self._inbox.put((kind, body))
                else:  # REPLY, READY
                    self._replies.put((kind, body))
        finally:
            if self._fatal is None:
                self._fatal = "the Kafka fetcher process exited"
            self._replies.put((FATAL, b""))
            self._inbox.put((FATAL, b""))

    def _send(self, command: dict[str, Any]) -> None:
        body = orjson.dumps(command)
        with self._send_lock:
            try:
                self._stdin.write(_CMD.pack(len(body)) + body)
                self._stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise self._died() from exc

    def _died(self) -> SourceError:
        code = self._proc.poll()
        return SourceError(
            f"{self._fatal or 'the Kafka fetcher process is gone'}"
            + (f" (exit code {code})" if code is not None else "")
            + "; feedstep stops so that it can be restarted from its last checkpoint"
        )

    def _wait_reply(self, timeout_s: float, what: str) -> tuple[bytes, bytes]:
        try:
            return self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise SourceBusy(
                f"the Kafka fetcher process did not answer {what!r} within {timeout_s:.0f} s "
                "(its consumer may be in a long rebalance)"
            ) from None

    def _rpc(self, op: str, timeout_s: float | None = None, **args: Any) -> Any:
        timeout_s = self._rpc_timeout_s if timeout_s is None else timeout_s
        with self._rpc_lock:
            self._next_id += 1
            ident = self._next_id
            self._send({"op": op, "id": ident, **args})
            while True:
                kind, body = self._wait_reply(timeout_s, op)
                if kind == FATAL:
                    self._replies.put((kind, body))  # later calls see it too
                    raise self._died()
                reply = orjson.loads(body)
                if reply.get("id") != ident:
                    self._keep_if_pending(reply)  # else an answer to a call that timed out
                    continue
                if "error" in reply:
                    raise _reply_error(reply)
                return reply.get("result")

    def _keep_if_pending(self, reply: dict[str, Any]) -> None:
        """Keep the answer to the commit sent by :meth:`commit_nowait`; drop any other."""
        if self._pending is not None and reply.get("id") == self._pending[0]:
            self._pending_reply = reply

    # -- Source -----------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Records in offset order per partition; rebalance hooks run here, between records."""
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        if self._prefetch:  # the first poll: the child joins the group and starts fetching
            self._send({"op": "credit", "n": self._prefetch})
            self._prefetch = 0
        while True:
            if self._at < len(self._buffer):
                if self._paused:
                    return out
                take = self._buffer[self._at : self._at + max_records - len(out)]
                self._at += len(take)
                out.extend(take)
                if len(out) >= max_records:
                    return out
                continue
            item = self._held
            self._held = None
            if item is None:
                try:
                    if out:
                        item = self._inbox.get_nowait()
                    else:
                        item = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    return out
            kind, body = item
            if kind == DATA:
                self._send({"op": "credit", "n": 1})
                self._buffer = decode_records(
                    body,
                    self._stale if self._seek_gen else None,
                    self._position,
                    self._decode_generation,
                )
                self._at = 0
                continue
            if out:
                self._held = item  # hooks run only once every earlier record was handed out
                return out
            if kind == FATAL:
                self._held = item
                raise self._died()
            self._handle_event(orjson.loads(body))

    def _stale(self, tp: TopicPartition, generation: int) -> bool:
        return generation < self._seek_gen.get(tp, 0)

    def _handle_event(self, event: dict[str, Any]) -> None:
        tps = _tps(event["tps"])
        if event["event"] == "assigned":
            self._assignment.update(tps)
            if self._on_assign is not None:
                self._on_assign(tps)
            return
        try:
            if self._on_revoke is not None:
                self._on_revoke(tps)
        finally:
            self._assignment.difference_update(tps)
            for tp in tps:
                self._position.pop(tp, None)
            self._send({"op": "done"})

    def set_rebalance_hooks(
        self,
        on_revoke: Callable[[list[TopicPartition]], None] | None,
        on_assign: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        """Run ``on_revoke`` before partitions are released and ``on_assign`` after seeking."""
        self._on_revoke = on_revoke
        self._on_assign = on_assign

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-offsets through the child (synchronous; errors as KafkaSource's).

        Raises:
            SourceBusy: the child did not answer within 30 s (retriable, like a broker outage).
        """
        try:  # one sent by commit_nowait goes first; this one supersedes it either way
            self.commit_result(wait=True)
        except SourceError as exc:
            if self._fatal is not None:
                raise
            log.info("an earlier commit failed (%s); committing the newer offsets now", exc)
        todo = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
        if not todo:
            return
        self._rpc("commit", timeout_s=30.0, offsets=_offsets_json(todo))
        self._committed.update(todo)

    def commit_nowait(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Send a commit to the child and return; :meth:`commit_result` reads its answer.

        The child sends it without waiting (``KafkaSource.commit_nowait``: its client's IO
        thread carries it while the child goes on polling) and answers once the broker has.
        An earlier commit_nowait is settled first (its error is raised).
        """
        self.commit_result(wait=True)
        todo = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
        if not todo:
            return
        with self._rpc_lock:
            self._next_id += 1
            self._pending = (self._next_id, todo, time.monotonic() + 30.0)
            self._pending_reply = None
            try:
                self._send(
                    {
                        "op": "commit",
                        "id": self._next_id,
                        "offsets": _offsets_json(todo),
                        "nowait": True,
                    }
                )
            except SourceError:
                self._pending = None
                raise

    def commit_result(self, wait: bool = False) -> bool:
        """True once the commit sent by :meth:`commit_nowait` succeeded (or none is out).

        Raises:
            SourceBusy: no answer within 30 s of sending it (retriable).
            CommitRejected, SourceError: what :meth:`commit` would have raised.
        """
        with self._rpc_lock:
            if self._pending is None:
                return True
            ident, todo, due = self._pending
            while self._pending_reply is None:
                try:
                    if wait:
                        kind, body = self._replies.get(timeout=max(0.0, due - time.monotonic()))
                    else:
                        kind, body = self._replies.get_nowait()
                except queue.Empty:
                    if not wait and time.monotonic() < due:
                        return False
                    self._pending = None
                    raise SourceBusy(
                        "the Kafka fetcher process did not answer a commit within 30 s (its "
                        "consumer may be in a long rebalance)"
                    ) from None
                if kind == FATAL:
                    self._replies.put((kind, body))  # later calls see it too
                    self._pending = None
                    raise self._died()
                self._keep_if_pending(orjson.loads(body))
            reply, self._pending, self._pending_reply = self._pending_reply, None, None
            if "error" in reply:
                raise _reply_error(reply)
            self._committed.update(todo)
            return True

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Continue each partition from the given next offset; records already sent are dropped."""
        if not offsets:
            return
        generation = int(self._rpc("seek", offsets=_offsets_json(offsets)))
        for tp, off in offsets.items():
            self._seek_gen[tp] = generation
            self._position[tp] = off
        rest = self._buffer[self._at :]
        self._buffer = [r for r in rest if r.tp not in offsets]
        self._at = 0

    def predecode(self, limits: DecodeLimits) -> bool:
        """From now on the child also decodes plain events, with ``limits`` (see the module doc)."""
        self._decode_generation += 1
        self._send(
            {
                "op": "predecode",
                "gen": self._decode_generation,
                "limits": dataclasses.asdict(limits),
            }
        )
        return True

    def read_back(self, tp: TopicPartition, count: int) -> list[bytes | None]:
        """Values of up to ``count`` records before where ``tp`` started (see KafkaSource)."""
        values = self._rpc("read_back", tp=list(tp), count=count) or []
        return [None if v is None else base64.b64decode(v) for v in values]

    def position(self) -> dict[TopicPartition, int]:
        """Next offset to hand out per partition this process has seen records of."""
        pos = dict(self._position)
        for r in self._buffer[self._at :][::-1]:
            pos[r.tp] = r.offset
        return pos

    def lag(self) -> dict[TopicPartition, int]:
        """High-water mark (from the child's last report) minus the position handed out."""
        pos = self.position()
        child_pos = {(t, p): o for t, p, o in self._state.get("position", [])}
        out: dict[TopicPartition, int] = {}
        for t, p, high in self._state.get("highwater", []):
            tp = (t, p)
            at = pos.get(tp, child_pos.get(tp))
            if at is not None:
                out[tp] = max(0, int(high) - at)
        return out

    def committed(self) -> dict[TopicPartition, int]:
        """Offsets committed through this source."""
        return dict(self._committed)

    def pause(self) -> None:
        """Hand out no more records; the child runs out of credit and pauses its partitions."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused = False

    def has_assignment(self) -> bool:
        """True once the group assigned partitions (or an assignment waits in the pipe)."""
        return bool(self._assignment) or bool(self._state.get("assigned"))

    def connected(self) -> bool:
        """The child's view of the broker connection; False once the child is gone."""
        if self._fatal is not None or self._proc.poll() is not None:
            return False
        return bool(self._state.get("connected", True))

    @property
    def pid(self) -> int:
        """The fetcher process's id."""
        return self._proc.pid

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the child to leave the group and exit; kill it if it does not within the time."""
        if self._proc.poll() is None:
            try:
                self._send({"op": "close"})
                self._stdin.close()
            except SourceError:
                pass
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("fetcher process %d did not exit; killing it", self._proc.pid)
                self._proc.kill()
                self._proc.wait()
        self._reader.join(timeout=5)


# -- child side ---------------------------------------------------------------------------------
class _Fetcher:
    """The child: a KafkaSource whose records and rebalances go to the parent as frames."""

    def __init__(self, out: IO[bytes], commands: queue.SimpleQueue[dict[str, Any]]) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self.commands = commands
        self.generation = 0
        self.credits = 0
        self.closing = False
        self.limits: DecodeLimits | None = None
        self.decode_generation = 0
        self.pending_commit: int | None = None  # id of the commit sent without waiting
        self.source: Any = None

    def send(self, kind: bytes, body: bytes) -> None:
        with self._out_lock:
            self._out.write(_FRAME.pack(kind, len(body)))
            self._out.write(body)
            self._out.flush()

    def send_json(self, kind: bytes, obj: Any) -> None:
        self.send(kind, orjson.dumps(obj))

    def send_error(self, ident: Any, exc: Exception) -> None:
        """Answer command ``ident`` with ``exc`` (the parent raises it as the same kind)."""
        message = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
        self.send_json(REPLY, {"id": ident, "error": message, "kind": type(exc).__name__})

    def start(self, spec: dict[str, Any]) -> None:
        from streaming.config import load_config
        from streaming.kafka import KafkaSource

        config = load_config(overrides=spec["config"], environ={})
        self.credits = 0  # the parent's first poll grants the first ones
        self.max_records = config.max_poll_records
        self.source = KafkaSource(config, on_revoke=self._on_revoke, on_assign=self._on_assign)
        self.consumer = self.source._consumer

    # rebalance hooks: the revoke one runs in KafkaSource's worker thread while poll() waits
    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        if self.closing:
            return
        self.answer_commit(wait=True)  # the parent settles it before its revoke work
        self.send_json(EVENT, {"event": "revoked", "tps": tps})
        while not self.closing:
            self.answer_commit()
            try:
                command = self.commands.get(timeout=0.5 if self.pending_commit is None else 0.01)
            except queue.Empty:
                continue
            if command.get("op") == "done":
                return
            self.handle(command)

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        if not self.closing:
            self.send_json(EVENT, {"event": "assigned", "tps": tps})

    def handle(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        if op == "credit":
            self.credits += int(command.get("n", 1))
            return
        if op == "predecode":
            self.limits = DecodeLimits(**command["limits"])
            self.decode_generation = int(command["gen"])
            return
        if op in ("close", "eof"):
            self.closing = True
            return
        if op == "done":
            return  # a revoke that was already given up on
        ident = command.get("id")
        try:
            if op == "commit":
                self.answer_commit(wait=True)  # one sent without waiting goes first
                offsets = {(t, p): o for t, p, o in command["offsets"]}
                if command.get("nowait"):
                    self.source.commit_nowait(offsets)
                    self.pending_commit = ident  # answered by answer_commit once done
                    return
                self.source.commit(offsets)
                result: Any = None
            elif op == "seek":
                self.generation += 1
                self.source.seek({(t, p): o for t, p, o in command["offsets"]})
                result = self.generation
            elif op == "read_back":
                values = self.source.read_back(tuple(command["tp"]), int(command["count"]))
                result = [None if v is None else base64.b64encode(v).decode() for v in values]
            else:
                raise SourceError(f"unknown fetcher command {op!r}")
        except Exception as exc:  # noqa: BLE001 - every failure is answered, never swallowed
            self.send_error(ident, exc)
            return
        self.send_json(REPLY, {"id": ident, "result": result})

    def answer_commit(self, wait: bool = False) -> None:
        """Answer the commit sent without waiting once it is done (``wait``: wait for it)."""
        ident = self.pending_commit
        if ident is None:
            return
        try:
            if not self.source.commit_result(wait=wait):
                return
        except Exception as exc:  # noqa: BLE001 - every failure is answered, never swallowed
            self.pending_commit = None
            self.send_error(ident, exc)
            return
        self.pending_commit = None
        self.send_json(REPLY, {"id": ident, "result": None})

    def state(self, connected: bool) -> dict[str, Any]:
        """Connection, assignment, high-water marks and positions, without blocking on I/O."""
        consumer = self.consumer
        assigned = consumer.assignment()
        high, positions = [], []
        for tp in assigned:
            mark = consumer.highwater(tp)
            if mark is not None:
                high.append([tp.topic, tp.partition, mark])
            try:  # consumer.position() may wait for the broker; the known position does not
                known = consumer._subscription.assignment[tp].position
            except (AttributeError, KeyError):
                known = None
            if known is not None:
                positions.append([tp.topic, tp.partition, getattr(known, "offset", known)])
        return {
            "connected": connected,
            "assigned": [[tp.topic, tp.partition] for tp in assigned],
            "highwater": high,
            "position": positions,
        }

    def _drain(self, wait_s: float) -> None:
        """Handle the commands waiting, first waiting up to ``wait_s`` for one."""
        try:
            command = (
                self.commands.get(timeout=wait_s) if wait_s > 0 else self.commands.get_nowait()
            )
        except queue.Empty:
            return
        self.handle(command)
        while not self.closing:
            try:
                self.handle(self.commands.get_nowait())
            except queue.Empty:
                return

    def run(self) -> None:
        consumer = self.consumer
        last_state = 0.0
        was_connected = False
        starved_since: float | None = None
        paused = False
        while not self.closing and self.credits <= 0:  # not polled yet: seeks arrive first
            self._drain(0.1)
        while not self.closing:
            self._drain(0.0 if self.credits > 0 else 0.1)
            if self.closing:
                break
            self.answer_commit()
            now = time.monotonic()
            connected = self.source.connected()
            if now - last_state >= 0.5 or connected != was_connected:
                last_state, was_connected = now, connected
                self.send_json(STATE, self.state(connected))
            if self.credits > 0:
                starved_since = None
                if paused:
                    consumer.resume(*consumer.paused())
                    paused = False
                polled = time.monotonic()
                batches = consumer.poll(timeout_ms=100, max_records=self.max_records)
                if not batches and time.monotonic() - polled < 0.05:
                    # nothing assigned (more members than partitions, a join under way): the
                    # client returns at once; wait for commands instead of spinning
                    self._drain(0.1)
            else:
                starved_since = starved_since or now
                if now - starved_since < 1.0:
                    continue
                if not paused:  # keep the membership without taking in more records
                    consumer.pause(*consumer.assignment())
                    paused = True
                batches = consumer.poll(timeout_ms=0)
            if batches:
                self.send(
                    DATA,
                    encode_records(self.generation, batches, self.limits, self.decode_generation),
                )
                self.credits -= 1


def _read_commands(stdin: IO[bytes], commands: queue.SimpleQueue[dict[str, Any]]) -> None:
    while True:
        head = stdin.read(_CMD.size)
        if len(head) < _CMD.size:
            break
        (length,) = _CMD.unpack(head)
        body = stdin.read(length)
        if len(body) < length:
            break
        commands.put(orjson.loads(body))
    commands.put({"op": "eof"})  # the parent closed the pipe or died: leave and exit
    time.sleep(15.0)
    os._exit(0)  # the main loop did not finish closing in time


def main() -> int:
    """Entry point of the child (``python -m streaming.fetcher``); not for direct use."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent shuts it down in order
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the frame stream
    stdin = sys.stdin.buffer
    head = stdin.read(_CMD.size)
    if len(head) < _CMD.size:
        return 1
    spec = orjson.loads(stdin.read(_CMD.unpack(head)[0]))
    logging.basicConfig(
        level=int(spec.get("log_level", logging.INFO)),
        format="%(asctime)s %(levelname)s feedstep-fetcher %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    commands: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    fetcher = _Fetcher(out, commands)
    try:
        fetcher.start(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        fetcher.send_json(FATAL, {"message": str(exc), "kind": type(exc).__name__})
        return 1
    threading.Thread(
        target=_read_commands, args=(stdin, commands), name="commands", daemon=True
    ).start()
    fetcher.send_json(READY, {"pid": os.getpid()})
    code = 0
    try:
        fetcher.run()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops
        log.exception("fetcher failed")
        fetcher.send_json(FATAL, {"message": f"fetcher failed: {type(exc).__name__}: {exc}"})
        code = 1
    finally:
        fetcher.closing = True
        try:
            fetcher.source.close()
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            log.warning("closing the consumer: %s", exc)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
