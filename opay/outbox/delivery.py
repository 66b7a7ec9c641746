"""Webhook delivery from the durable outbox: leased claims, signed POSTs, bounded retries.

Every front end runs one deliverer, claiming due events under leases from the outbox of
every shard (opay/outbox/store.py: one per shard, in its hash tag, so on Redis Cluster on
the shard's node). Delivery is at least once: receivers dedupe on the event `id`.

Each claimed event is POSTed in its own task (at most `webhook_concurrency` at once over
all shards, shared fairly between them, each bounded by `webhook_timeout_seconds`), so a
slow or failing endpoint never holds up payments (they only write the outbox) nor other
events beyond their slot; a shard whose Redis does not answer holds up no other shard's
events (`Deliverer`). A 2xx deletes the event. Anything else is retried after
`min(max, base * 2^(n-1))` seconds (+ up to 10% jitter); after `webhook_max_attempts`
attempts the event moves to the dead-letter sorted set of its shard's outbox,
`opay:webhooks:dead:{s<n>}` (score: when it died), keeping its body in the events hash and
its last error in `opay:webhooks:errors:{s<n>}`. A dead event is never selected again, so
it cannot stall the queue (Rafiki #2664).

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

from opay.actors.registry import read_event
from opay.clock import now_ms
from opay.observability import metrics
from opay.outbox.render import render
from opay.outbox.signing import SIGNATURE_HEADER, sign
from opay.outbox.store import Claimed, Outbox
from opay.persistence import keys
from opay.persistence.clients import ShardClients
from opay.settings import Settings

log = logging.getLogger("opay.webhooks")

# Added to the per-request timeout: how long a claimed event stays invisible to other
# deliverers. Only a deliverer that died (or lost Redis) mid-attempt ever runs it out.
LEASE_SLACK_SECONDS = 30.0


def backoff_seconds(attempt: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, capped, up to +10% jitter."""
    delay = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return delay * (1.0 + 0.1 * jitter())


class _Shard:
    """One shard's outbox as the deliverer sees it."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.claiming = False  # a claim of it is on its way (at most one at a time)
        self.next_at = 0.0  # monotonic: when to claim from it again
        self.failing = False  # its last claim failed: asked for one event at a time until one answers


class Deliverer:
    """Delivers the events of every shard's outbox, within limits shared by all of them:
    `webhook_concurrency` deliveries in flight, of which `webhook_batch_max` at most being
    claimed at once. The free slots go round the shards ready to claim (a slot at a time,
    starting after the last shard served), so a busy shard cannot starve another. Each
    shard's claims run on their own: a shard whose Redis is slow or down holds up only
    itself, and while its claims fail it is asked once per poll interval for one event."""

    def __init__(self, outboxes: list[Outbox], http: httpx.AsyncClient, settings: Settings) -> None:
        assert outboxes
        assert settings.webhook_url and settings.webhook_max_attempts > 0 and settings.webhook_concurrency > 0
        assert settings.webhook_batch_max > 0 and settings.webhook_poll_interval_seconds > 0
        assert settings.webhook_timeout_seconds > 0 and settings.webhook_backoff_base_seconds > 0
        self._shards = [_Shard(outbox) for outbox in outboxes]
        self._http = http
        self._settings = settings
        self._lease_ms = int((settings.webhook_timeout_seconds + LEASE_SLACK_SECONDS) * 1000)
        self._tasks: set[asyncio.Task] = set()  # deliveries in flight
        self._claims: set[asyncio.Task] = set()
        self._reserved = 0  # slots held by the claims on their way (what they may return)
        self._turn = 0  # the shard first offered slots in the next round
        self._wake = asyncio.Event()  # a claim or a delivery ended: slots or shards may be free
        self._crashed: BaseException | None = None

    def _free(self) -> int:
        """Slots a claim may take now: never more than can start at once (claims are
        leased from the moment they are taken), nor more than the batch limit."""
        settings = self._settings
        return min(settings.webhook_concurrency - len(self._tasks), settings.webhook_batch_max) - self._reserved

    async def run(self) -> None:
        poll = self._settings.webhook_poll_interval_seconds
        try:
            while True:
                if self._crashed is not None:
                    raise self._crashed
                self._wake.clear()
                self._claim_round(time.monotonic())
                metrics.WEBHOOKS_IN_FLIGHT.set(len(self._tasks))
                now = time.monotonic()
                idle = [shard.next_at - now for shard in self._shards if not shard.claiming]
                # Every slot taken, or every shard being claimed from: the end of a delivery
                # or a claim wakes us. Else the next shard to come due does.
                wait = poll if self._free() <= 0 or not idle else min(poll, max(min(idle), 0.001))
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            running = self._claims | self._tasks
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _claim_round(self, now: float) -> None:
        """Starts a claim of each ready shard that gets a share of the free slots."""
        count = len(self._shards)
        order = [(self._turn + n) % count for n in range(count)]
        ready = [n for n in order if not self._shards[n].claiming and self._shards[n].next_at <= now]
        shares = dict.fromkeys(ready, 0)
        free = self._free()
        while free > 0:
            takers = [n for n in ready if not (self._shards[n].failing and shares[n] >= 1)]
            if not takers:
                break
            for n in takers[:free]:
                shares[n] += 1
            free -= min(free, len(takers))
        served = [n for n in ready if shares[n] > 0]
        if served:
            self._turn = (served[-1] + 1) % count
        for n in served:
            shard = self._shards[n]
            shard.claiming = True
            self._reserved += shares[n]
            task = asyncio.create_task(self._claim(shard, shares[n]))
            self._claims.add(task)
            task.add_done_callback(self._claim_ended)

    def _claim_ended(self, task: asyncio.Task) -> None:
        self._claims.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crashed is None:
            self._crashed = task.exception()  # not Redis failing: a bug, raised by run()
        self._wake.set()

    async def _claim(self, shard: _Shard, asked: int) -> None:
        settings = self._settings
        claimed: list[Claimed] = []
        try:
            now = now_ms()
            claimed = await shard.outbox.claim(now, asked, now + self._lease_ms, settings.webhook_max_attempts)
        except redis.RedisError as error:
            if not shard.failing:
                log.warning("webhooks of shard %d paused: %s", shard.outbox.shard, error)
            shard.failing = True
            shard.next_at = time.monotonic() + settings.webhook_poll_interval_seconds
        else:
            if shard.failing:
                log.info("webhooks of shard %d resumed", shard.outbox.shard)
            shard.failing = False
            # A full batch: more may be due at once. Else: look again after the interval.
            shard.next_at = 0.0 if len(claimed) == asked else time.monotonic() + settings.webhook_poll_interval_seconds
        finally:
            self._reserved -= asked
            shard.claiming = False
        for event in claimed:
            task = asyncio.create_task(self.deliver(shard.outbox, event))
            self._tasks.add(task)
            task.add_done_callback(self._delivery_ended)

    def _delivery_ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def deliver(self, outbox: Outbox, claimed: Claimed) -> None:
        """One attempt at `claimed`, an event of `outbox` (its shard's), and its outcome recorded there."""
        settings = self._settings
        try:
            event, state = read_event(claimed.body)
            body = render(event, state, settings.public_url)
        except Exception as error:  # a poison event is buried at once, never retried
            await self._settle(outbox, claimed, f"undeliverable event: {error}", final=True)
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
        await self._settle(outbox, claimed, error, final=claimed.attempt >= settings.webhook_max_attempts)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        # Streamed and never read: a receiver's answer body costs us nothing.
        async with self._http.stream("POST", self._settings.webhook_url, content=body, headers=headers) as response:
            return response.status_code

    async def _settle(self, outbox: Outbox, claimed: Claimed, error: str, *, final: bool) -> None:
        settings = self._settings
        try:
            if not error:
                await outbox.delivered(claimed.id)
                metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
                return
            now = now_ms()
            if final:
                buried = await outbox.failed(claimed, error, now, None)
                metrics.WEBHOOK_ATTEMPTS.labels("dead" if buried else "superseded").inc()
                if buried:
                    log.warning("webhook %s dead after %d attempts: %s", claimed.id, claimed.attempt, error)
                return
            wait = backoff_seconds(claimed.attempt, settings.webhook_backoff_base_seconds, settings.webhook_backoff_max_seconds)
            rescheduled = await outbox.failed(claimed, error, now, now + int(wait * 1000))
            metrics.WEBHOOK_ATTEMPTS.labels("failed" if rescheduled else "superseded").inc()
            log.info("webhook %s attempt %d failed (%s); retry in %.1f s", claimed.id, claimed.attempt, error, wait)
        except redis.RedisError as failure:
            # The lease runs out and the event is claimed again: at least once, never lost.
            metrics.WEBHOOK_ATTEMPTS.labels("unrecorded").inc()
            log.warning("webhook %s: could not record the outcome: %s", claimed.id, failure)


async def run(shards: ShardClients, settings: Settings) -> None:
    """The background task `opay serve` runs in every front end: delivers the events of
    every shard's outbox; returns at once without a URL."""
    if not settings.webhook_url:
        return
    if not settings.webhook_secret:
        log.warning("OPAY_WEBHOOK_SECRET is empty: webhooks are sent unsigned")
    outboxes = [Outbox(shards.of(n), keys.Outbox(n)) for n in range(shards.count)]
    limits = httpx.Limits(max_connections=settings.webhook_concurrency, max_keepalive_connections=settings.webhook_concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=settings.webhook_timeout_seconds, follow_redirects=False) as http:
        await Deliverer(outboxes, http, settings).run()
