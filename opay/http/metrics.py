"""`GET /metrics` on the operator port: Prometheus text (opay/observability/metrics.py).

Unauthenticated, as /healthz is: scrapers hold no operator token, and the operator port
is private by design (OPAY_OPERATOR_HOST is loopback unless the operator opens it to the
network where Prometheus runs). The metrics name no wallet, payment or token: routes are
templates, amounts are totals per asset.

A scrape reads what lives outside this process at the moment it is asked: every shard's
tallies (all at once, each within SOURCE_DEADLINE_SECONDS; one that does not answer shows
`opay_shard_up 0` and no other series) and the webhook queue in Redis (one round trip to
each shard's outbox, all at once; no depth at all unless every shard answers).
"""

from __future__ import annotations

import asyncio

import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.http.services import Services, services
from opay.observability import metrics

# Well inside Prometheus's default scrape timeout (10 s): a stuck shard costs a scrape this.
SOURCE_DEADLINE_SECONDS = 1.0


async def scrape(request: Request) -> Response:
    s = services(request)
    stats, depth = await asyncio.gather(s.router.each_shard("stats", SOURCE_DEADLINE_SECONDS), _webhook_depth(s))
    body, content_type = metrics.exposition([metrics.ShardCollector(stats), metrics.OutboxCollector(depth)], request.headers.get("accept", ""))
    return Response(body, media_type=content_type)


async def _webhook_depth(s: Services) -> tuple[int, int] | None:
    try:
        return await asyncio.wait_for(s.webhook_events.depth(), SOURCE_DEADLINE_SECONDS)
    except (redis.RedisError, asyncio.TimeoutError):
        return None


ROUTES = [Route("/metrics", scrape, methods=["GET"], name="metrics")]
