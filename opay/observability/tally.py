"""What a shard counts of its own work, in plain Python: counters and histogram buckets.

A shard runs in a Ray worker process whose prometheus_client registry nobody scrapes (and
a remote Ray cluster's workers are not even on the scraped host). So a shard keeps these
plain tallies, returns them from `Shard.stats()`, and the front end that is scraped asks
every shard and renders them (opay/observability/metrics.py ShardCollector). Nothing here
imports prometheus_client: a worker never writes multiprocess files.

Money is kept in Python ints (exact, unbounded); it is rounded once, to the float64 the
exposition format carries, only when rendered.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter

# Seconds of one group commit (write_many: one pipelined round trip of CAS scripts).
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Buckets:
    """A histogram's state: a count per upper bound (not cumulative), an overflow, a sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        assert list(bounds) == sorted(bounds) and bounds
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class ShardTally:
    """Since this shard process started (a restarted shard starts at zero: the series are
    counters, and Prometheus reads a drop as a reset)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.write_seconds = Buckets(WRITE_BUCKETS)
        self.credits: Counter[tuple[str, str, str]] = Counter()  # (source, outcome, code) -> credits
        self.credited: Counter[tuple[str, int]] = Counter()  # (asset code, scale) -> minor units
        self.settlements: Counter[tuple[str, str]] = Counter()  # (local | remote, completed | failed)
        self.settled: Counter[tuple[str, int]] = Counter()  # (debit asset code, scale) -> minor units sent

    def credit(self, source: str, outcome: str, code: str = "", asset: tuple[str, int] | None = None, amount: int = 0) -> None:
        assert isinstance(amount, int) and amount >= 0
        self.credits[(source, outcome, code)] += 1
        if asset is not None and amount:
            self.credited[asset] += amount

    def settlement(self, kind: str, outcome: str, asset: tuple[str, int], amount: int) -> None:
        assert isinstance(amount, int) and amount >= 0
        self.settlements[(kind, outcome)] += 1
        self.settled[asset] += amount

    def snapshot(self) -> dict:
        """Plain values (Ray pickles them; ints stay exact across)."""
        return {
            "started_at": self.started_at,
            "write_seconds": self.write_seconds.snapshot(),
            "credits": dict(self.credits),
            "credited": dict(self.credited),
            "settlements": dict(self.settlements),
            "settled": dict(self.settled),
        }
