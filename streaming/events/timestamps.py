"""RFC 3339 timestamps: the one parser (to aware UTC, or what was wrong) and the formatter."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Final

_UTC: Final = timezone.utc

# Everything RFC 3339 allows (lowercase t/z, a space separator, any fraction length), plus a
# missing offset so that a naive time gets its own message.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)


def _parse_ts(text: str) -> datetime | str:
    """Parse an RFC 3339 timestamp to aware UTC; on failure return what was wrong."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return "is not an RFC 3339 timestamp"
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if zulu is None and sign is None:
        return "has no UTC offset (a naive time is ambiguous)"
    sec = int(second)
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    if sec == 60:  # leap second: keep it inside the same minute
        sec, micro = 59, 999_999
    if zulu is not None:
        tz = _UTC
    else:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            return "has a UTC offset out of range (hours 00..23, minutes 00..59)"
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if sign == "-" else delta)
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour), int(minute), sec, micro, tzinfo=tz
        )
        return dt.astimezone(_UTC)
    except (ValueError, OverflowError):
        return "is not a valid calendar date and time in UTC"


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with a UTC offset into an aware UTC datetime.

    Args:
        text: For example ``"2026-11-28T10:00:00Z"`` or ``"2026-11-28T12:00:00.5+02:00"``.

    Returns:
        The same instant as an aware datetime in UTC.

    Raises:
        ValueError: The text is not RFC 3339, has no offset, or is not a real date.

    Example:
        >>> parse_timestamp("2026-11-28T12:00:00+02:00").isoformat()
        '2026-11-28T10:00:00+00:00'
    """
    result = _parse_ts(text)
    if isinstance(result, str):
        raise ValueError(
            f"timestamp {result}; expected RFC 3339 with an offset, e.g. '2026-11-28T10:00:00Z'"
        )
    return result


def format_timestamp(ts: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` suffix.

    Example:
        >>> format_timestamp(parse_timestamp("2026-11-28T12:00:00.25+02:00"))
        '2026-11-28T10:00:00.250000Z'
    """
    if ts.tzinfo is None:
        raise ValueError("format_timestamp needs an aware datetime, got a naive one")
    return ts.astimezone(_UTC).isoformat()[:-6] + "Z"
