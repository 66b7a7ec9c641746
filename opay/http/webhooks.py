"""Webhook delivery from the durable outbox: leased claims, signed POSTs, bounded retries.

Entity actors queue an event atomically with the state change it reports (hash
`opay:webhooks:events`, due time in sorted set `opay:webhooks:due`). Every front end runs
one deliverer. It claims due events with one Lua script that pushes each claimed event's
due time forward by a lease and counts the attempt, so two front ends never deliver the
same attempt at once; a crashed deliverer's claims simply come due again when the lease
runs out. Delivery is at least once: receivers dedupe on the event `id`.

Each claimed event is POSTed in its own task (at most `webhook_concurrency` at once, each
bounded by `webhook_timeout_seconds`), so a slow or failing endpoint never holds up
payments (they only write the outbox) nor other events beyond their slot. A 2xx deletes
the event. Anything else is retried after `min(max, base * 2^(n-1))` seconds (+ up to 10%
jitter); after `webhook_max_attempts` attempts the event moves to the dead-letter sorted
set `opay:webhooks:dead` (score: when it died), keeping its body in the events hash and
its last error in `opay:webhooks:errors`. A dead event is never selected again, so it
cannot stall the queue (Rafiki #2664).

Signature: `Opay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from typing import Callable

import httpx
import msgspec
import redis
import redis.asyncio as aioredis

from opay.actors.entity import Event
from opay.clock import now_ms
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.times import format_ms
from opay.http import wire
from opay.persistence import codec, keys
from opay.settings import Settings

log = logging.getLogger("opay.webhooks")

SIGNATURE_HEADER = "Opay-Signature"
# Added to the per-request timeout: how long a claimed event stays invisible to other
# deliverers. Only a deliverer that died (or lost Redis) mid-attempt ever runs it out.
LEASE_SLACK_SECONDS = 30.0

# KEYS: due, events, attempts, dead, errors.
# ARGV: now ms, lease-until ms, limit, max attempts.
# Returns a flat list: id, attempt, body, id, attempt, body, ...
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if not body then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  else
    local n = redis.call('HINCRBY', KEYS[3], id, 1)
    if n > tonumber(ARGV[4]) then
      -- Its last attempt was claimed and never settled (the deliverer died): bury it.
      redis.call('HSET', KEYS[3], id, ARGV[4])
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[4], ARGV[1], id)
      if redis.call('HEXISTS', KEYS[5], id) == 0 then
        redis.call('HSET', KEYS[5], id, 'the last attempt was never settled')
      end
    else
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      out[#out + 1] = id
      out[#out + 1] = n
      out[#out + 1] = body
    end
  end
end
return out
"""

# KEYS: due, dead, attempts, errors. ARGV: id, attempt, error, now ms, retry-at ms ('' = bury).
# Acts only if this attempt is still the event's latest and the event is still queued.
_FAILED = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
end
return 1
"""


class Claimed(msgspec.Struct, frozen=True):
    id: str
    attempt: int
    body: bytes


class Outbox:
    """The Redis side of delivery. Key names are parameters so tests can use their own."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        events: str = keys.WEBHOOK_EVENTS,
        due: str = keys.WEBHOOK_DUE,
        dead: str = keys.WEBHOOK_DEAD,
        attempts: str = keys.WEBHOOK_ATTEMPTS,
        errors: str = keys.WEBHOOK_ERRORS,
    ) -> None:
        self._client = client
        self.events, self.due, self.dead, self.attempts, self.errors = events, due, dead, attempts, errors
        self._claim = client.register_script(_CLAIM)
        self._failed = client.register_script(_FAILED)

    async def claim(self, now: int, limit: int, lease_until: int, max_attempts: int) -> list[Claimed]:
        """Due events, at most `limit`, each leased until `lease_until` and its attempt counted."""
        assert limit > 0 and lease_until > now and max_attempts > 0
        flat = await self._claim(
            keys=[self.due, self.events, self.attempts, self.dead, self.errors], args=[now, lease_until, limit, max_attempts]
        )
        return [Claimed(flat[i].decode(), int(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)]

    async def delivered(self, event_id: str) -> None:
        """Forget the event entirely (also out of the dead set, if a late success beat its burial)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.due, event_id).zrem(self.dead, event_id)
            pipe.hdel(self.events, event_id).hdel(self.attempts, event_id).hdel(self.errors, event_id)
            await pipe.execute()

    async def failed(self, claimed: Claimed, error: str, now: int, retry_at: int | None) -> bool:
        """Reschedule at `retry_at`, or bury when None. False if the attempt was superseded."""
        args = [claimed.id, claimed.attempt, error[:500], now, "" if retry_at is None else retry_at]
        return bool(await self._failed(keys=[self.due, self.dead, self.attempts, self.errors], args=args))


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Opay-Signature` header value for `body` signed at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None, tolerance_seconds: int = 300) -> bool:
    """What a receiver does: the raw body, a `t` within tolerance, any `v1` matching."""
    timestamp, candidates = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def backoff_seconds(attempt: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, capped, up to +10% jitter."""
    delay = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return delay * (1.0 + 0.1 * jitter())


def render(event: Event, resource_server_url: str) -> bytes:
    if isinstance(event.state, IncomingPayment):
        data = wire.incoming_payment(event.state, resource_server_url)
    elif isinstance(event.state, OutgoingPayment):
        data = wire.outgoing_payment(event.state, resource_server_url)
    else:
        raise ValueError(f"no webhook view for {type(event.state).__name__}")
    return msgspec.json.encode({"id": event.id, "type": event.type, "createdAt": format_ms(event.created_at_ms), "data": data})


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
            event = codec.decode(claimed.body, Event)
            body = render(event, settings.resource_server_url)
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
                return
            now = now_ms()
            if final:
                if await self._outbox.failed(claimed, error, now, None):
                    log.warning("webhook %s dead after %d attempts: %s", claimed.id, claimed.attempt, error)
                return
            wait = backoff_seconds(claimed.attempt, settings.webhook_backoff_base_seconds, settings.webhook_backoff_max_seconds)
            await self._outbox.failed(claimed, error, now, now + int(wait * 1000))
            log.info("webhook %s attempt %d failed (%s); retry in %.1f s", claimed.id, claimed.attempt, error, wait)
        except redis.RedisError as failure:
            # The lease runs out and the event is claimed again: at least once, never lost.
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
