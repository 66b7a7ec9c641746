"""Probes for load balancers and Kubernetes, on the operator port, without a token.

- `GET /healthz`: the process is up and serves HTTP. No I/O: a liveness probe that
  failed with Redis would have every front end restarted for an outage they cannot fix.
- `GET /readyz`: Redis answers a PING and every shard a ping, all at once, within
  OPAY_READINESS_TIMEOUT_SECONDS; else 503 naming the parts that did not, so a balancer
  stops sending requests this process could only answer with 503.

Neither says anything about wallets, payments or tokens: they need no operator token.
"""

from __future__ import annotations

import asyncio

import msgspec
import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.http.operator import HEALTHY
from opay.http.resources import json
from opay.http.services import Services, services


class Readiness(msgspec.Struct, frozen=True):
    status: str  # "ok" or "unavailable"
    parts: list[str]  # what was asked: "redis", "shard 0", ...
    failing: list[str]  # those that did not answer in time (or answered with an error)


async def healthz(request: Request) -> Response:
    return json(200, HEALTHY)


async def readyz(request: Request) -> Response:
    s = services(request)
    deadline = s.settings.readiness_timeout_seconds
    redis_up, pings = await asyncio.gather(_redis_answers(s, deadline), s.router.each_shard("ping", deadline))
    parts = ["redis", *(f"shard {n}" for n in range(len(pings)))]
    failing = ([] if redis_up else ["redis"]) + [f"shard {n}" for n, answer in enumerate(pings) if answer is None]
    if failing:
        return json(503, Readiness("unavailable", parts, failing))
    return json(200, Readiness("ok", parts, []))


async def _redis_answers(s: Services, deadline: float) -> bool:
    try:
        await asyncio.wait_for(s.queries.ping(), deadline)
    except (redis.RedisError, OSError, asyncio.TimeoutError):
        return False
    return True


ROUTES = [
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/readyz", readyz, methods=["GET"], name="readyz"),
]
