"""Redis clients, configured once: fail fast, so an outage is a quick 503, not a stall.

redis-py retries a failed command ten times with backoff by default; inside a shard,
which runs one batch at a time, that would freeze every entity it hosts for seconds.
One immediate retry covers a dropped connection; beyond that the caller hears
"unavailable" and retries with its idempotency key.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry


def blocking(url: str, timeout_seconds: float) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, retry=Retry(NoBackoff(), 1)
    )


def asynchronous(url: str, timeout_seconds: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, retry=AsyncRetry(NoBackoff(), 1)
    )
