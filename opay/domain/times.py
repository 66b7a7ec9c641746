"""Instants are integer milliseconds since the Unix epoch; the wire form is RFC 3339 UTC."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from opay.domain.errors import Invalid

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def to_datetime(instant_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=instant_ms)


def to_ms(moment: datetime) -> int:
    """An aware datetime as milliseconds; sub-millisecond parts are floored."""
    return (moment - EPOCH) // _ONE_MS


def format_ms(instant_ms: int) -> str:
    moment = to_datetime(instant_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{instant_ms % 1000:03d}Z"


def parse_rfc3339_ms(value: object, field: str) -> int:
    """Sub-millisecond digits are truncated (floor), so a deadline is never moved later."""
    error = Invalid("invalid_date_time", f"{field} must be an RFC 3339 date-time with an offset", {"field": field})
    if not isinstance(value, str) or "T" not in value.upper():
        raise error
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise error from None
    if moment.tzinfo is None:
        raise error
    return to_ms(moment)


# RFC 3339 §5.6 date-time (the JSON Schema `date-time` format): extended form, seconds
# required, an offset required. fromisoformat alone also takes ISO 8601 basic and week forms.
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_date_time(value: object, field: str) -> int:
    """A wire `date-time` field: exactly RFC 3339, then as parse_rfc3339_ms."""
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise Invalid("invalid_date_time", f"{field} must be an RFC 3339 date-time with an offset", {"field": field})
    return parse_rfc3339_ms(value, field)
