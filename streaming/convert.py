"""Feedback events → learner examples (the only place that knows both vocabularies).

==============================  ==================================================
feedback                        example for the ``reward`` objective
==============================  ==================================================
thumb +1 / -1                   pointwise, target 1.0 / 0.0
rating 1..5                     pointwise, target (rating - 1) / 4
preference chosen / rejected    pairwise, chosen preferred over rejected
correction text                 pairwise, the correction preferred over the reply
==============================  ==================================================
"""

from __future__ import annotations

from typing import Any

from learner.base import Example
from streaming.events import DEFAULT_LIMITS, DecodeLimits, FeedbackEvent
from streaming.plain import KINDS, PlainValues, plain_values

PlainFields = tuple[str, float, Example, str, str, str]
"""``(event_id, ts as epoch seconds, example, prompt, response, feedback type)``."""


def to_example(event: FeedbackEvent) -> Example:
    """Map one validated event to one reward-model example.

    Example:
        >>> to_example(event).target  # a thumb up  # doctest: +SKIP
        1.0
    """
    fb = event.feedback
    if fb.type == "thumb":
        return _example(
            event.prompt, event.response, 1.0 if fb.value == 1 else 0.0, None, event.weight
        )
    if fb.type == "rating":
        target = (float(fb.value or 1) - 1.0) / 4.0
        return _example(event.prompt, event.response, target, None, event.weight)
    if fb.type == "preference":
        return _example(event.prompt, str(fb.chosen), None, str(fb.rejected), event.weight)
    if fb.type == "correction":
        return _example(event.prompt, str(fb.text), None, event.response, event.weight)
    raise ValueError(f"no example mapping for feedback type {fb.type!r}")


class _ExampleDraft:
    """An :class:`Example` under construction: the same slots in the same order, writable.

    Python lets an object's ``__class__`` be reassigned to a class with the same memory layout,
    so a draft filled by plain attribute stores turns into a real, frozen :class:`Example` in
    one step, without the frozen ``__init__``'s ``object.__setattr__`` calls.
    """

    __slots__ = Example.__slots__


def _example(
    prompt: str, response: str, target: float | None, rejected: str | None, weight: float
) -> Example:
    """``Example(prompt, response, target=target, rejected=rejected, weight=weight)``, cheaper.

    When the values pass the checks of ``Example.__post_init__`` (exactly one of ``target`` and
    ``rejected``; ``target`` in [0, 1]; ``weight`` a float > 0, as every decoded event's is),
    the example is built without re-running them; otherwise by ``Example`` itself, which
    accepts or raises and says why. Either way the result is the same.
    """
    if (
        (target is None) == (rejected is None)
        or type(weight) is not float
        or not weight > 0.0
        or (target is not None and not 0.0 <= target <= 1.0)
    ):
        return Example(prompt, response, target=target, rejected=rejected, weight=weight)
    draft: Any = object.__new__(_ExampleDraft)
    draft.prompt = prompt
    draft.response = response
    draft.target = target
    draft.rejected = rejected
    draft.weight = weight
    draft.__class__ = Example
    example: Example = draft
    return example


def plain_training_fields(
    raw: bytes | None, limits: DecodeLimits = DEFAULT_LIMITS
) -> PlainFields | None:
    """What the pipeline needs of a plain valid event, without building the event itself.

    For a payload that :func:`streaming.events.decode_event` accepts on its fast path, this is
    ``(e.event_id, e.ts.timestamp(), to_example(e), e.prompt, e.response, e.feedback.type)``
    for ``e = decode_event(raw, limits)``, made from the same checked values; ``None`` for any
    other payload (the caller then decodes it in full, which explains any rejection).

    Example:
        >>> fields = plain_training_fields(b'{"event_id": "e-1", "ts": "2026-11-28T10:00:00Z", '
        ...     b'"prompt": "p", "response": "r", "feedback": {"type": "rating", "value": 5}}')
        >>> fields[0], fields[1], fields[2].target, fields[5]
        ('e-1', 1795860000.0, 1.0, 'rating')
        >>> plain_training_fields(b'{"event_id": "e-1"}') is None
        True
    """
    values = plain_values(raw, limits)
    return None if values is None else from_plain(values)


def from_plain(values: PlainValues) -> PlainFields:
    """:data:`PlainFields` of a :func:`streaming.plain.plain_values` result (a list will do).

    This is the part of :func:`plain_training_fields` left once another process (the fetcher)
    has run ``plain_values``: building the example.
    """
    event_id, ts, kind, prompt, response, shown, target, rejected, weight, _ = values
    example = _example(prompt, response if shown is None else shown, target, rejected, weight)
    return event_id, ts, example, prompt, response, KINDS[kind]
