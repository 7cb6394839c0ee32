"""feedstep's exceptions: one root, a few meaningful kinds; transient ones are retriable."""

from __future__ import annotations


class FeedstepError(Exception):
    """Root of every error feedstep raises on purpose."""

    retriable = False


class ConfigError(FeedstepError, ValueError):
    """The configuration is wrong; the message names the key and what is expected."""


class SourceError(FeedstepError):
    """The event source (Kafka, a file) failed."""


class BrokerUnavailable(SourceError):
    """The Kafka broker cannot be reached; retrying later may succeed."""

    retriable = True


class SourceBusy(SourceError):
    """The source did not answer in time (e.g. its consumer is in a long rebalance); retriable."""

    retriable = True


class PipelineError(FeedstepError):
    """The training stage failed; the offsets of the failed batch were not committed."""


class CommitRejected(SourceError):
    """The group no longer lets this member commit (it was rebalanced away); not retried."""


class SinkUnavailable(FeedstepError):
    """A sink could not deliver every message in time; the undelivered ones stay queued."""

    retriable = True


def json_kind(value: object) -> str:
    """The JSON kind of a parsed value, for error messages that must not quote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
