"""A plain valid event as plain values: what a micro-batch needs of it, decodable anywhere.

Most feedback events are plain: valid, within the limits, nothing to truncate. For those,
:func:`plain_values` gives in one flat tuple of strings and numbers everything the pipeline
needs: the id, the time, the feedback type, the texts and the target of the example they map
to (see :mod:`streaming.convert` for the mapping). Nothing here imports torch, so the fetcher
process can run it beside the pipeline (``Source.predecode``) and ship the tuple as
MessagePack; :func:`streaming.convert.from_plain` turns it into the example.
"""

from __future__ import annotations

from streaming.events import (
    DEFAULT_LIMITS,
    DecodeLimits,
    _plain_wire,
    _Preference,
    _Rating,
    _Thumb,
)
from streaming.offsets import id_hash

KINDS = ("thumb", "rating", "preference", "correction")
"""Feedback types by the code :func:`plain_values` gives them."""

PlainValues = tuple[
    str, float, int, str, str, "str | None", "float | None", "str | None", float, int
]
"""``(event_id, ts as epoch seconds, feedback type code (KINDS), prompt, response, the
example's response when it is not the event's response, else None, target, rejected,
weight, id_hash(event_id))`` — the last is the id's term of the ledger digest."""


def plain_values(raw: bytes | None, limits: DecodeLimits = DEFAULT_LIMITS) -> PlainValues | None:
    """The plain values of ``raw`` if it is a plain valid event, else None.

    None means "decode it in full" (:func:`streaming.events.decode_event`), which either
    accepts it (truncating, say) or says why it is rejected.

    Example:
        >>> plain_values(b'{"event_id": "e-1", "ts": "2026-11-28T10:00:00Z", '
        ...     b'"prompt": "p", "response": "r", "feedback": {"type": "thumb", "value": 1}}')
        ('e-1', 1795860000.0, 0, 'p', 'r', None, 1.0, None, 1.0, 64736430377241100)
        >>> plain_values(b'{"event_id": "e-1"}') is None
        True
    """
    if type(raw) is not bytes or len(raw) > limits.max_event_bytes:
        return None
    plain = _plain_wire(raw, limits.max_text_chars)
    if plain is None:
        return None
    wire, _, weight, ts = plain
    prompt, response, fb = wire.prompt, wire.response, wire.feedback
    event_id = wire.event_id
    term = id_hash(event_id)
    if isinstance(fb, _Thumb):
        target = 1.0 if fb.value == 1 else 0.0
        return event_id, ts.timestamp(), 0, prompt, response, None, target, None, weight, term
    if isinstance(fb, _Rating):
        target = (float(fb.value) - 1.0) / 4.0
        return event_id, ts.timestamp(), 1, prompt, response, None, target, None, weight, term
    if isinstance(fb, _Preference):
        chosen, rejected = fb.chosen, fb.rejected
        return event_id, ts.timestamp(), 2, prompt, response, chosen, None, rejected, weight, term
    text = fb.text
    return event_id, ts.timestamp(), 3, prompt, response, text, None, response, weight, term
