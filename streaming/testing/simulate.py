"""A simulated chat-feedback stream with a learnable quality rule (for the demo and tests).

Users ask about one of several topics. The assistant's reply is either *helpful* (it answers
on the asked topic, politely) or *unhelpful* (it drifts to another topic, or brushes the user
off). Users reward helpful replies and punish unhelpful ones, with a configurable share of
label noise. A reward model can learn the rule from text alone; a random head cannot, so the
prequential accuracy of the candidate should pull away from the baseline's.

The generator is seeded and writes events in the wire schema (JSON bytes), so the demo runs
the same decode → batch → step path as a real Kafka topic.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

_TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "cooking": (
        [
            "How long should I boil an egg?",
            "What can I cook with rice and beans?",
            "How do I keep pasta from sticking?",
            "What's a quick vegetarian dinner?",
        ],
        [
            "Simmer it for about nine minutes, then cool it in cold water so it peels easily.",
            "Try a skillet of rice and beans with cumin, garlic and a squeeze of lime.",
            "Use plenty of salted boiling water and stir during the first two minutes.",
            "A chickpea curry with spinach takes twenty minutes and one pan.",
        ],
    ),
    "travel": (
        [
            "What should I pack for a week in Lisbon?",
            "How early should I get to the airport?",
            "Is a rail pass worth it in Europe?",
            "How do I avoid jet lag?",
        ],
        [
            "Light layers, comfortable walking shoes for the hills, and a rain jacket.",
            "For international flights, arrive about three hours before departure.",
            "It pays off if you take several long train rides; compare point-to-point fares first.",
            "Shift your sleep an hour a day before leaving and get daylight on arrival.",
        ],
    ),
    "python": (
        [
            "How do I reverse a list in Python?",
            "What does a Python generator do?",
            "How do I read a file line by line?",
            "Why use a virtual environment?",
        ],
        [
            "Call items.reverse() to do it in place, or use reversed(items) for an iterator.",
            "It yields values one at a time, so you can loop over data without holding it all.",
            "Open it in a with block and iterate over the file object; each step gives a line.",
            "It keeps each project's packages separate, so upgrades in one cannot break another.",
        ],
    ),
    "fitness": (
        [
            "How often should I run each week?",
            "What is a good warm-up before lifting?",
            "How can I improve my sleep after workouts?",
            "Should I stretch before running?",
        ],
        [
            "Three or four runs a week, with one longer easy run, is a solid base.",
            "Five minutes of light cardio, then a few lighter sets of the first exercise.",
            "Finish hard sessions a few hours before bed and keep the room cool and dark.",
            "Do dynamic moves like leg swings before, and save long static stretches for after.",
        ],
    ),
}
_BRUSH_OFFS = [
    "I can't help with that.",
    "Look it up yourself.",
    "That's not my problem.",
    "Figure it out, it's not hard.",
    "No idea, ask someone else.",
    "Whatever, it doesn't matter.",
]
_OPENERS = ["", "Sure! ", "Good question. ", "Happy to help: ", "Of course. "]


class SimulatedFeedback:
    """Seeded generator of feedback events.

    Args:
        seed: makes the stream reproducible.
        noise: share of events whose feedback is flipped (0 = a perfect rule).
        mix: weights of (thumb, rating, preference, correction) events.
        start: timestamp of the first event; events are ``spacing_s`` apart.

    Example:
        >>> gen = SimulatedFeedback(seed=1)
        >>> event = next(iter(gen.events(1)))
        >>> sorted(event)[:3]
        ['conversation_id', 'event_id', 'feedback']
    """

    def __init__(
        self,
        seed: int = 0,
        noise: float = 0.1,
        mix: tuple[float, float, float, float] = (0.6, 0.15, 0.2, 0.05),
        start: datetime | None = None,
        spacing_s: float = 0.0,
    ) -> None:
        if not 0.0 <= noise < 0.5:
            raise ValueError(f"noise must be in [0, 0.5), got {noise}")
        self._rng = random.Random(seed)
        self.noise = noise
        self.mix = mix
        self.start = start
        self.spacing_s = spacing_s

    def _reply(self, topic: str, helpful: bool) -> str:
        rng = self._rng
        if helpful:
            return rng.choice(_OPENERS) + rng.choice(_TOPICS[topic][1])
        if rng.random() < 0.5:
            return rng.choice(_BRUSH_OFFS)
        other = rng.choice([t for t in _TOPICS if t != topic])
        return rng.choice(_OPENERS) + rng.choice(_TOPICS[other][1])

    def event(self, index: int) -> dict[str, Any]:
        """The next event as a dict in the wire schema."""
        rng = self._rng
        topic = rng.choice(list(_TOPICS))
        prompt = rng.choice(_TOPICS[topic][0])
        helpful = rng.random() < 0.5
        response = self._reply(topic, helpful)
        flip = rng.random() < self.noise
        seen_good = helpful != flip
        kind = rng.choices(("thumb", "rating", "preference", "correction"), weights=self.mix)[0]
        if kind == "thumb":
            feedback: dict[str, Any] = {"type": "thumb", "value": 1 if seen_good else -1}
        elif kind == "rating":
            value = rng.choice((4, 5)) if seen_good else rng.choice((1, 2))
            feedback = {"type": "rating", "value": value}
        elif kind == "preference":
            good, bad = self._reply(topic, True), self._reply(topic, False)
            chosen, rejected = (good, bad) if not flip else (bad, good)
            feedback = {"type": "preference", "chosen": chosen, "rejected": rejected}
            response = chosen
        else:
            feedback = {"type": "correction", "text": self._reply(topic, True)}
            response = self._reply(topic, False)
        base = self.start or datetime.now(timezone.utc)
        ts = (
            base + timedelta(seconds=index * self.spacing_s)
            if self.start
            else datetime.now(timezone.utc)
        )
        return {
            "schema_version": 1,
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "prompt": prompt,
            "response": response,
            "feedback": feedback,
            "model_version": "sim-0",
            "conversation_id": f"c{rng.randrange(10_000)}",
        }

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """``n`` events in order."""
        for i in range(n):
            yield self.event(i)

    def payloads(self, n: int) -> Iterator[bytes]:
        """``n`` events as JSON bytes, as a producer would write them."""
        for e in self.events(n):
            yield json.dumps(e, separators=(",", ":")).encode()
