"""The server's Prometheus metrics (prometheus-client), declared once, here.

Every part records into these objects; `GET /metrics` on the operator port renders them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("opay_http_requests_total", "HTTP requests answered, by server, method, route template and status", ["server", "method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "opay_http_request_duration_seconds",
    "HTTP request latency, from the first byte read to the last byte sent, by server, method and route template",
    ["server", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe_request(server: str, method: str, route: str, status: int, seconds: float) -> None:
    """One answered request; `route` is the route's template (never the raw path: bounded labels)."""
    REQUESTS.labels(server, method, route, str(status)).inc()
    REQUEST_SECONDS.labels(server, method, route).observe(seconds)
