"""Feedback events: the schema, the one decoder, timestamps and the feedback → example table.

Example:
    >>> from streaming.events import decode_event, to_example
    >>> event = decode_event(b'{"event_id": "e-1", "ts": "2026-11-28T10:00:00Z", '
    ...                      b'"prompt": "p", "response": "r", '
    ...                      b'"feedback": {"type": "thumb", "value": 1}}')
    >>> to_example(event).target
    1.0
"""

from streaming.events.decode import decode_event, encode_event, event_to_dict
from streaming.events.examples import to_example
from streaming.events.schema import (
    DEFAULT_LIMITS,
    FEEDBACK_TYPES,
    SCHEMA_VERSION,
    DecodeLimits,
    Feedback,
    FeedbackEvent,
    Rejection,
    RejectReason,
)
from streaming.events.timestamps import format_timestamp, parse_timestamp

__all__ = [
    "DEFAULT_LIMITS",
    "FEEDBACK_TYPES",
    "SCHEMA_VERSION",
    "DecodeLimits",
    "Feedback",
    "FeedbackEvent",
    "RejectReason",
    "Rejection",
    "decode_event",
    "encode_event",
    "event_to_dict",
    "format_timestamp",
    "parse_timestamp",
    "to_example",
]
