"""Webhook delivery from the durable outbox: leased claims, signed POSTs, bounded retries.

Every front end runs one deliverer, claiming due events from the outbox (opay/outbox/store.py)
under leases. Delivery is at least once: receivers dedupe on the event `id`.

Each claimed event is POSTed in its own task (at most `webhook_concurrency` at once, each
bounded by `webhook_timeout_seconds`), so a slow or failing endpoint never holds up
payments (they only write the outbox) nor other events beyond their slot. A 2xx deletes
the event. Anything else is retried after `min(max, base * 2^(n-1))` seconds (+ up to 10%
jitter); after `webhook_max_attempts` attempts the event moves to the dead-letter sorted
set `opay:webhooks:dead` (score: when it died), keeping its body in the events hash and
its last error in `opay:webhooks:errors`. A dead event is never selected again, so it
cannot stall the queue (Rafiki #2664).

The body is rendered by opay/outbox/render.py and signed by opay/outbox/signing.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

import httpx
import redis
import redis.asyncio as aioredis

from opay.actors.registry import EntityEvent
from opay.clock import now_ms
from opay.observability import metrics
from opay.outbox.render import render
from opay.outbox.signing import SIGNATURE_HEADER, sign
from opay.outbox.store import Claimed, Outbox
from opay.persistence import codec
from opay.settings import Settings

log = logging.getLogger("opay.webhooks")

# Added to the per-request timeout: how long a claimed event stays invisible to other
# deliverers. Only a deliverer that died (or lost Redis) mid-attempt ever runs it out.
LEASE_SLACK_SECONDS = 30.0


def backoff_seconds(attempt: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, capped, up to +10% jitter."""
    delay = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return delay * (1.0 + 0.1 * jitter())


class Deliverer:
    def __init__(self, outbox: Outbox, http: httpx.AsyncClient, settings: Settings) -> None:
        assert settings.webhook_url and settings.webhook_max_attempts > 0 and settings.webhook_concurrency > 0
        assert settings.webhook_batch_max > 0 and settings.webhook_poll_interval_seconds > 0
        assert settings.webhook_timeout_seconds > 0 and settings.webhook_backoff_base_seconds > 0
        self._outbox = outbox
        self._http = http
        self._settings = settings
        self._lease_ms = int((settings.webhook_timeout_seconds + LEASE_SLACK_SECONDS) * 1000)
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        settings = self._settings
        try:
            while True:
                free = settings.webhook_concurrency - len(self._tasks)
                asked = min(free, settings.webhook_batch_max)
                claimed: list[Claimed] = []
                if asked > 0:
                    try:
                        now = now_ms()
                        claimed = await self._outbox.claim(now, asked, now + self._lease_ms, settings.webhook_max_attempts)
                    except redis.RedisError as error:
                        log.warning("webhooks paused: %s", error)
                for event in claimed:
                    task = asyncio.create_task(self.deliver(event))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                metrics.WEBHOOKS_IN_FLIGHT.set(len(self._tasks))
                if len(self._tasks) >= settings.webhook_concurrency:
                    # Every slot busy: claim again as soon as one frees up (claims are leased
                    # from the moment they are taken, so never claim more than can start now).
                    await asyncio.wait(
                        set(self._tasks), timeout=settings.webhook_poll_interval_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                elif asked > 0 and len(claimed) == asked:
                    await asyncio.sleep(0)  # a full batch: more may be due
                else:
                    await asyncio.sleep(settings.webhook_poll_interval_seconds)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def deliver(self, claimed: Claimed) -> None:
        settings = self._settings
        try:
            event = codec.decode(claimed.body, EntityEvent)
            body = render(event, settings.public_url)
        except Exception as error:  # a poison event is buried at once, never retried
            await self._settle(claimed, f"undeliverable event: {error}", final=True)
            return
        headers = {
            "content-type": "application/json",
            "user-agent": "opay-webhooks",
            "opay-event-id": event.id,
            "opay-event-type": event.type,
            "opay-delivery-attempt": str(claimed.attempt),
        }
        if settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, body, int(time.time()))
        try:
            status = await asyncio.wait_for(self._post(body, headers), settings.webhook_timeout_seconds)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except asyncio.TimeoutError:
            error = f"no answer within {settings.webhook_timeout_seconds} s"
        except Exception as failure:  # connection refused, reset, bad URL...: all just a failed attempt
            error = f"{type(failure).__name__}: {failure}"
        await self._settle(claimed, error, final=claimed.attempt >= settings.webhook_max_attempts)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        # Streamed and never read: a receiver's answer body costs us nothing.
        async with self._http.stream("POST", self._settings.webhook_url, content=body, headers=headers) as response:
            return response.status_code

    async def _settle(self, claimed: Claimed, error: str, *, final: bool) -> None:
        settings = self._settings
        try:
            if not error:
                await self._outbox.delivered(claimed.id)
                metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
                return
            now = now_ms()
            if final:
                buried = await self._outbox.failed(claimed, error, now, None)
                metrics.WEBHOOK_ATTEMPTS.labels("dead" if buried else "superseded").inc()
                if buried:
                    log.warning("webhook %s dead after %d attempts: %s", claimed.id, claimed.attempt, error)
                return
            wait = backoff_seconds(claimed.attempt, settings.webhook_backoff_base_seconds, settings.webhook_backoff_max_seconds)
            rescheduled = await self._outbox.failed(claimed, error, now, now + int(wait * 1000))
            metrics.WEBHOOK_ATTEMPTS.labels("failed" if rescheduled else "superseded").inc()
            log.info("webhook %s attempt %d failed (%s); retry in %.1f s", claimed.id, claimed.attempt, error, wait)
        except redis.RedisError as failure:
            # The lease runs out and the event is claimed again: at least once, never lost.
            metrics.WEBHOOK_ATTEMPTS.labels("unrecorded").inc()
            log.warning("webhook %s: could not record the outcome: %s", claimed.id, failure)


async def run(client: aioredis.Redis, settings: Settings) -> None:
    """The background task `opay serve` runs in every front end; returns at once without a URL."""
    if not settings.webhook_url:
        return
    if not settings.webhook_secret:
        log.warning("OPAY_WEBHOOK_SECRET is empty: webhooks are sent unsigned")
    limits = httpx.Limits(max_connections=settings.webhook_concurrency, max_keepalive_connections=settings.webhook_concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=settings.webhook_timeout_seconds, follow_redirects=False) as http:
        await Deliverer(Outbox(client), http, settings).run()
