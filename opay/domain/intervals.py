"""ISO 8601 repeating intervals (`R[n]/start/duration`) as grant limits use them.

The interval holding an instant is computed in O(1): fixed-length durations by integer
division, calendar durations (years, months) by estimating the repetition index from
the month difference and correcting by at most a step or two. Repetitions are never
walked one by one (Rafiki does, from the start of the grant).
"""

from __future__ import annotations

import calendar
import re

import msgspec

from opay.domain.errors import Invalid
from opay.domain.times import parse_rfc3339_ms, to_datetime, to_ms

_DURATION = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?"
)
# The mean Gregorian month (365.2425 days / 12), exactly, in ms. Real months stray from
# it by at most a few days in total over any span, so an estimate from it is off by at
# most a couple of repetitions.
_MEAN_MONTH_MS = 2_629_746_000


class Duration(msgspec.Struct, frozen=True):
    months: int  # years are 12 months: calendar arithmetic
    ms: int  # weeks, days, hours, minutes, seconds: fixed length (UTC, no leap seconds)

    @property
    def is_fixed(self) -> bool:
        return self.months == 0


class RepeatingInterval(msgspec.Struct, frozen=True):
    repetitions: int | None  # None: unbounded (R/...)
    start_ms: int
    duration: Duration


class Window(msgspec.Struct, frozen=True):
    """[start_ms, end_ms): the repetition an instant falls in."""

    index: int
    start_ms: int
    end_ms: int


def parse_duration(text: str) -> Duration:
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise Invalid("invalid_interval", f"{text!r} is not an ISO 8601 duration")
    part = {name: int(value or 0) for name, value in match.groupdict().items()}
    duration = Duration(
        months=part["years"] * 12 + part["months"],
        ms=((((part["weeks"] * 7 + part["days"]) * 24 + part["hours"]) * 60 + part["minutes"]) * 60 + part["seconds"]) * 1000,
    )
    if duration.months == 0 and duration.ms == 0:
        raise Invalid("invalid_interval", "the interval's duration must be positive")
    return duration


def parse_interval(text: str) -> RepeatingInterval:
    """`R<n>/<start>/<duration>` or `R/<start>/<duration>`; other forms are refused clearly."""
    parts = text.split("/")
    if len(parts) != 3 or not parts[0].startswith("R"):
        raise Invalid("invalid_interval", "interval must be R[n]/<start date-time>/<duration>")
    count = parts[0][1:]
    if count and not count.isdigit():
        raise Invalid("invalid_interval", "the repetition count must be a non-negative integer")
    if parts[1].startswith("P"):
        raise Invalid("invalid_interval", "interval must name its start: R[n]/<start>/<duration>")
    return RepeatingInterval(
        repetitions=int(count) if count else None,
        start_ms=parse_rfc3339_ms(parts[1], "interval start"),
        duration=parse_duration(parts[2]),
    )


def _add_months(instant_ms: int, months: int) -> int:
    moment = to_datetime(instant_ms)
    total = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return to_ms(moment.replace(year=year, month=month + 1, day=day))


def repetition_start(interval: RepeatingInterval, index: int) -> int:
    """Start of repetition `index`, always computed from the interval's start (so month-end
    clamping never drifts: Jan 31 + 1 month is Feb 28/29, + 2 months is Mar 31)."""
    d = interval.duration
    start = interval.start_ms + index * d.ms
    return _add_months(start, index * d.months) if d.months else start


def window_at(interval: RepeatingInterval, instant_ms: int) -> Window | None:
    """The repetition holding `instant_ms`, or None before the start or after the last one.
    Rn means n+1 repetitions are not implied: Rn is n repetitions, R0 none, R unbounded."""
    if instant_ms < interval.start_ms:
        return None
    d = interval.duration
    if d.is_fixed:
        index = (instant_ms - interval.start_ms) // d.ms
    else:
        index = (instant_ms - interval.start_ms) // (d.months * _MEAN_MONTH_MS + d.ms)
        while repetition_start(interval, index + 1) <= instant_ms:
            index += 1
        while index > 0 and repetition_start(interval, index) > instant_ms:
            index -= 1
    if interval.repetitions is not None and index >= interval.repetitions:
        return None
    return Window(index=index, start_ms=repetition_start(interval, index), end_ms=repetition_start(interval, index + 1))
