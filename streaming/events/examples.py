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

from learner.base import Example
from streaming.events.decode import FeedbackEvent


def to_example(event: FeedbackEvent) -> Example:
    """Map one validated event to one reward-model example.

    Example:
        >>> to_example(event).target  # a thumb up  # doctest: +SKIP
        1.0
    """
    fb = event.feedback
    if fb.type == "thumb":
        target = 1.0 if fb.value == 1 else 0.0
        return Example(event.prompt, event.response, target=target, weight=event.weight)
    if fb.type == "rating":
        target = (float(fb.value or 1) - 1.0) / 4.0
        return Example(event.prompt, event.response, target=target, weight=event.weight)
    if fb.type == "preference":
        return Example(event.prompt, str(fb.chosen), rejected=str(fb.rejected), weight=event.weight)
    if fb.type == "correction":
        return Example(event.prompt, str(fb.text), rejected=event.response, weight=event.weight)
    raise ValueError(f"no example mapping for feedback type {fb.type!r}")
