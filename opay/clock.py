"""The wall clock, in the integer milliseconds the domain works in."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
