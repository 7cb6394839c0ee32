#!/usr/bin/env python3
"""A stand-in chat service for the local stack: it writes simulated user feedback to Kafka.

It plays both sides of a chat: a user asks about cooking, travel, Python or fitness, the
"assistant" answers either helpfully (on the asked topic, politely) or not (another topic, or a
brush-off), and the user reacts the way users do: thumbs up for helpful replies, thumbs down
for the rest, now and then a rating, a preference between two replies or a correction, with a
little label noise. Each reaction is one feedback event in feedstep's schema (the README's
"Feedback event"), keyed by its conversation, on the ``feedback`` topic. feedstep can learn the
rule from the text alone, so its candidate pulls away from the baseline on the dashboard.

It only writes feedback and logs what it sent: the score endpoint that a real chat service
would call to rerank its replies (``POST /v1/score``) does not exist yet.

Only the standard library and kafka-python. Settings from the environment (or the flags):

    KAFKA_BOOTSTRAP_SERVERS  brokers, default localhost:9092
    FEEDBACK_TOPIC           default feedback
    EVENTS_PER_S             feedback events per second, default 5
    MAX_EVENTS               stop after this many, default 0 (never)
    NOISE                    share of reactions that disagree with the rule, default 0.1
    SEED                     default: a new stream each start

``--stdout`` prints the events as JSON lines instead of sending them (no Kafka needed)::

    python3 deploy/compose/chat_service.py --stdout --max-events 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("chat-service")

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "cooking": (
        ["How long should I boil an egg?", "What can I cook with rice and beans?"],
        [
            "Simmer it for about nine minutes, then cool it in cold water so it peels easily.",
            "Try a skillet of rice and beans with cumin, garlic and a squeeze of lime.",
        ],
    ),
    "travel": (
        ["What should I pack for a week in Lisbon?", "How do I avoid jet lag?"],
        [
            "Light layers, comfortable walking shoes for the hills, and a rain jacket.",
            "Shift your sleep an hour a day before leaving and get daylight on arrival.",
        ],
    ),
    "python": (
        ["How do I reverse a list in Python?", "How do I read a file line by line?"],
        [
            "Call items.reverse() to do it in place, or use reversed(items) for an iterator.",
            "Open it in a with block and iterate over the file object; each step gives a line.",
        ],
    ),
    "fitness": (
        ["How often should I run each week?", "Should I stretch before running?"],
        [
            "Three or four runs a week, with one longer easy run, is a solid base.",
            "Do dynamic moves like leg swings before, and save long static stretches for after.",
        ],
    ),
}
BRUSH_OFFS = ["I can't help with that.", "Look it up yourself.", "No idea, ask someone else."]
OPENERS = ["", "Sure! ", "Good question. ", "Happy to help: "]
MODEL_VERSION = "chat-sim-1"


class Conversations:
    """Simulated chat turns and the user's feedback on them, as feedback events.

    Args:
        rng: the random source (seed it for a repeatable stream).
        noise: share of reactions that disagree with the rule.

    Example:
        >>> event = Conversations(random.Random(0)).event()
        >>> sorted(event)[:4]
        ['conversation_id', 'event_id', 'feedback', 'model_version']
    """

    def __init__(self, rng: random.Random, noise: float = 0.1) -> None:
        self.rng = rng
        self.noise = noise

    def reply(self, topic: str, helpful: bool) -> str:
        """The assistant's reply to a question on ``topic``."""
        if helpful:
            return self.rng.choice(OPENERS) + self.rng.choice(TOPICS[topic][1])
        if self.rng.random() < 0.5:
            return self.rng.choice(BRUSH_OFFS)
        other = self.rng.choice([t for t in TOPICS if t != topic])
        return self.rng.choice(OPENERS) + self.rng.choice(TOPICS[other][1])

    def feedback(self, topic: str, helpful: bool) -> dict[str, Any]:
        """The user's reaction: mostly thumbs, some ratings, preferences and corrections."""
        rng = self.rng
        liked = helpful != (rng.random() < self.noise)
        kind = rng.choices(["thumb", "rating", "preference", "correction"], [70, 15, 10, 5])[0]
        if kind == "thumb":
            return {"type": "thumb", "value": 1 if liked else -1}
        if kind == "rating":
            return {"type": "rating", "value": rng.choice([4, 5] if liked else [1, 2])}
        good, bad = self.reply(topic, True), self.reply(topic, False)
        if kind == "preference":
            chosen, rejected = (good, bad) if liked else (bad, good)
            return {"type": "preference", "chosen": chosen, "rejected": rejected}
        return {"type": "correction", "text": good}

    def event(self) -> dict[str, Any]:
        """One feedback event in feedstep's schema (README "Feedback event")."""
        rng = self.rng
        topic = rng.choice(list(TOPICS))
        # A correction rewrites a reply the user did not like.
        helpful = rng.random() < 0.5
        feedback = self.feedback(topic, helpful)
        if feedback["type"] == "correction":
            helpful = False
        return {
            "schema_version": 1,
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "prompt": rng.choice(TOPICS[topic][0]),
            "response": self.reply(topic, helpful),
            "feedback": feedback,
            "model_version": MODEL_VERSION,
            "conversation_id": f"c{rng.randrange(10_000)}",
            "tenant": "local",
        }


def connect(bootstrap_servers: str, deadline_s: float = 120.0) -> Any:
    """A kafka-python producer, retried with backoff while the broker comes up."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    delay, start = 1.0, time.monotonic()
    while True:
        try:
            return KafkaProducer(
                bootstrap_servers=bootstrap_servers.split(","),
                client_id="chat-service",
                acks="all",
                linger_ms=20,
            )
        except KafkaError as exc:  # no broker yet: a timeout (3.x) or NoBrokersAvailable (2.x)
            if not exc.retriable or time.monotonic() - start > deadline_s:
                raise
            log.info("no broker at %s yet; retrying in %.0f s", bootstrap_servers, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def main(argv: list[str] | None = None) -> int:
    """Write feedback events until stopped (SIGTERM/SIGINT) or ``--max-events`` are sent."""
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap-servers", default=env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    parser.add_argument("--topic", default=env.get("FEEDBACK_TOPIC", "feedback"))
    parser.add_argument("--events-per-s", type=float, default=float(env.get("EVENTS_PER_S", 5)))
    parser.add_argument("--max-events", type=int, default=int(env.get("MAX_EVENTS", 0)))
    parser.add_argument("--noise", type=float, default=float(env.get("NOISE", 0.1)))
    seed = env.get("SEED")
    parser.add_argument("--seed", type=int, default=int(seed) if seed else None)
    parser.add_argument("--stdout", action="store_true", help="print JSON lines, no Kafka")
    args = parser.parse_args(argv)
    if args.events_per_s <= 0:
        parser.error(f"--events-per-s must be > 0, got {args.events_per_s}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    chats = Conversations(random.Random(args.seed), noise=args.noise)
    producer = None if args.stdout else connect(args.bootstrap_servers)
    if producer is not None:
        log.info("writing feedback to %s on %s", args.topic, args.bootstrap_servers)
        log.info("no score endpoint yet (POST /v1/score): this service only writes feedback")
    sent, counts = 0, dict.fromkeys(("thumb", "rating", "preference", "correction"), 0)
    next_at = time.monotonic()
    while not stopping and (args.max_events == 0 or sent < args.max_events):
        event = chats.event()
        value = json.dumps(event, ensure_ascii=False).encode()
        if producer is None:
            sys.stdout.write(value.decode() + "\n")
        else:
            producer.send(args.topic, key=event["conversation_id"].encode(), value=value)
            next_at += 1.0 / args.events_per_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        sent += 1
        counts[event["feedback"]["type"]] += 1
        if producer is not None and sent % 100 == 0:
            log.info("sent %d feedback events (%s)", sent, _counts(counts))
    if producer is not None:
        producer.flush(timeout=10)
        producer.close(timeout=10)
        log.info("stopped after %d feedback events (%s)", sent, _counts(counts))
    return 0


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())


if __name__ == "__main__":
    sys.exit(main())
