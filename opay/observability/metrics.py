"""The server's Prometheus metrics (prometheus-client), declared once, here.

Two kinds, by where the work happens:

- In the front end (this process): requests, shard calls, timers, webhook delivery, ILP
  packets. Plain prometheus_client metrics, recorded where things happen.
- In the shards (Ray worker processes nobody scrapes, maybe on other hosts): group commit
  latency, active entities, credits, settlements, money. Each shard keeps plain tallies
  (opay/observability/tally.py) and `GET /metrics` asks every shard for them at scrape
  time with a short deadline (ShardRouter.stats); ShardCollector renders the answers. A
  shard that does not answer has `opay_shard_up{shard} 0` and none of its other series
  (absent, not zero: a rate over a gap is no rate, never a fake drop). The webhook queue
  depth is read from Redis at scrape time the same way (OutboxCollector).

Several front-end processes (PROMETHEUS_MULTIPROC_DIR set in their environment before they
start, one directory shared by all and emptied before the first starts): prometheus_client's
multiprocess mode keeps each process's values in files there and a scrape of any process
sums them (MultiProcessCollector). Every gauge declared here needs a `multiprocess_mode`
saying how processes combine. What the collectors read at scrape time (shards, Redis) is
the same from every process, so it is rendered once, by the process scraped.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

REQUESTS = Counter("opay_http_requests_total", "HTTP requests answered, by server, method, route template and status", ["server", "method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "opay_http_request_duration_seconds",
    "HTTP request latency, from the first byte read to the last byte sent, by server, method and route template",
    ["server", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

SHARD_BATCH_SIZE = Histogram(
    "opay_shard_batch_size",
    "Commands per Ray call from this front end to a shard (the router's batches)",
    ["shard"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SHARD_CALL_SECONDS = Histogram(
    "opay_shard_call_duration_seconds",
    "One batch's Ray call to a shard, sent to answered, by shard and outcome (ok, timeout, error)",
    ["shard", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TIMER_LAG_SECONDS = Histogram(
    "opay_timer_lag_seconds",
    "How late a due time was first fired, by shard (a later try after a lease is backoff, not lag)",
    ["shard"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
WEBHOOK_ATTEMPTS = Counter(
    "opay_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered, failed (retried later), dead (the last one: buried), "
    "superseded (another deliverer settled it), unrecorded (Redis did not take the outcome; the lease brings it back)",
    ["outcome"],
)
WEBHOOKS_IN_FLIGHT = Gauge("opay_webhook_deliveries_in_flight", "Webhook POSTs under way (summed over live front-end processes)", multiprocess_mode="livesum")
ILP_PACKETS = Counter(
    "opay_ilp_packets_total",
    "ILP Prepares by direction (received at POST /ilp, sent to peers) and answer: fulfilled, or rejected with its code",
    ["direction", "outcome", "code"],
)
# A peer may answer any three characters: only ILP's own code shapes become labels.
_ILP_CODE = re.compile(r"[FTR][0-9]{2}")


def observe_request(server: str, method: str, route: str, status: int, seconds: float) -> None:
    """One answered request; `route` is the route's template (never the raw path: bounded labels)."""
    REQUESTS.labels(server, method, route, str(status)).inc()
    REQUEST_SECONDS.labels(server, method, route).observe(seconds)


def observe_shard_call(shard: int, size: int, outcome: str, seconds: float) -> None:
    SHARD_BATCH_SIZE.labels(str(shard)).observe(size)
    SHARD_CALL_SECONDS.labels(str(shard), outcome).observe(seconds)


def observe_timer_lags(shard: int, lags_seconds: list[float]) -> None:
    if lags_seconds:
        histogram = TIMER_LAG_SECONDS.labels(str(shard))
        for lag in lags_seconds:
            histogram.observe(max(0.0, lag))


def observe_ilp_packet(direction: str, code: str) -> None:
    """One Prepare's answer: `code` "" for a Fulfill, else the Reject's code."""
    if not code:
        ILP_PACKETS.labels(direction, "fulfilled", "").inc()
    else:
        ILP_PACKETS.labels(direction, "rejected", code if _ILP_CODE.fullmatch(code) else "other").inc()


# ---------------------------------------------------------------- read at scrape time

# Money counters are in minor units (amount * 10^-scale of the asset), one series per asset
# and shard. The shard adds them up in Python ints, exactly and without bound; the text
# format (and Prometheus's storage) carries float64, so a total is rounded once, here, to
# the nearest float64: exact up to 2^53 minor units (about 9.007e15: 90 trillion at scale 2,
# but only 0.009 of an asset at scale 18), and above that off by less than one part in
# 2^53 of the total, never drifting (nothing is added to a rounded value). These counters
# are for rates and dashboards; the books are the payments' amounts in Redis.


class ShardCollector:
    """The shards' own tallies (Shard.stats), as one scrape found them; `stats[n]` None:
    shard n did not answer in time."""

    def __init__(self, stats: list[dict | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("opay_shard_up", "1 if the shard answered this scrape within its deadline, else 0", labels=["shard"])
        active = GaugeMetricFamily("opay_shard_active_entities", "Entities held in the shard's memory", labels=["shard"])
        started = GaugeMetricFamily("opay_shard_start_time_seconds", "When the shard's process started (its counters count from then)", labels=["shard"])
        quarantined = CounterMetricFamily("opay_shard_quarantined", "Snapshots that could not be decoded and were set aside", labels=["shard"])
        writes = HistogramMetricFamily(
            "opay_redis_write_duration_seconds", "A shard's group commit: one pipelined round trip of compare-and-set writes", labels=["shard"]
        )
        credits = CounterMetricFamily(
            "opay_credits",
            "Credits to incoming payments by source (operator, ilp, settlement) and outcome "
            "(credited, replayed, refused, failed, unavailable) with the refusal's code",
            labels=["shard", "source", "outcome", "code"],
        )
        credited = CounterMetricFamily(
            "opay_money_credited_minor_units", "Money credited to incoming payments, in the asset's minor units", labels=["shard", "asset_code", "asset_scale"]
        )
        settlements = CounterMetricFamily(
            "opay_settlements", "Outgoing payments settled, by kind (local, remote) and outcome (completed, failed)", labels=["shard", "kind", "outcome"]
        )
        settled = CounterMetricFamily(
            "opay_money_settled_minor_units",
            "Money sent by settled outgoing payments (sentAmount), in the debit asset's minor units",
            labels=["shard", "asset_code", "asset_scale"],
        )
        for n, stats in enumerate(self._stats):
            shard = str(n)
            up.add_metric([shard], 0 if stats is None else 1)
            if stats is None:
                continue
            active.add_metric([shard], stats["active"])
            quarantined.add_metric([shard], stats["quarantined"])
            tally = stats.get("metrics")
            if tally is None:  # a shard still running code from before these tallies
                continue
            started.add_metric([shard], tally["started_at"])
            writes.add_metric([shard], _cumulative(tally["write_seconds"]), tally["write_seconds"]["sum"])
            for (source, outcome, code), count in tally["credits"].items():
                credits.add_metric([shard, source, outcome, code], count)
            for (code, scale), amount in tally["credited"].items():
                credited.add_metric([shard, code, str(scale)], amount)
            for (kind, outcome), count in tally["settlements"].items():
                settlements.add_metric([shard, kind, outcome], count)
            for (code, scale), amount in tally["settled"].items():
                settled.add_metric([shard, code, str(scale)], amount)
        return [up, active, started, quarantined, writes, credits, credited, settlements, settled]


def _cumulative(buckets: dict) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip(buckets["bounds"], buckets["counts"]):
        total += count
        out.append((floatToGoString(bound), total))
    out.append(("+Inf", total + buckets["counts"][-1]))
    return out


class OutboxCollector:
    """The webhook queue as Redis held it at scrape time; None: Redis did not answer."""

    def __init__(self, depth: tuple[int, int] | None) -> None:
        self._depth = depth

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("opay_redis_up", "1 if Redis answered this scrape's read, else 0")
        up.add_metric([], 0 if self._depth is None else 1)
        events = GaugeMetricFamily(
            "opay_webhook_events", "Webhook events in the outbox: pending (not yet delivered) or dead (gave up)", labels=["state"]
        )
        if self._depth is not None:
            events.add_metric(["pending"], self._depth[0])
            events.add_metric(["dead"], self._depth[1])
        return [up, events]


def exposition(collectors: list, accept: str = "", multiprocess_dir: str | None = None) -> tuple[bytes, str]:
    """What a scrape gets, and its content type: this process's metrics (or, in
    multiprocess mode, every front-end process's, summed from `multiprocess_dir`, default
    PROMETHEUS_MULTIPROC_DIR) and what the given collectors read at scrape time. The format
    follows the scraper's Accept header as prometheus_client's own handlers do (OpenMetrics
    when asked, else the classic text format 0.0.4)."""
    directory = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = CollectorRegistry()
    if directory:
        MultiProcessCollector(registry, directory)
    else:
        registry.register(REGISTRY)  # a registry is a collector; this one holds every metric above
    for collector in collectors:
        registry.register(collector)
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
