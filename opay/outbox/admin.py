"""The operator's side of the outbox: list pending and dead events, retry a dead one, purge.

The layout is opay/outbox/store.py's: an event's body in the events hash, its attempt
count and last error in their hashes, its id in exactly one of the due set (pending:
scored by when a deliverer next takes it, a running attempt's lease end included) and
the dead set (scored by when it died). Every change here is one script, so it is atomic
with the deliverers' claims and settlements:

- A dead event is selected by no claim, so retrying it (dead -> due now, attempts reset)
  starts a delivery no one else is making. The one delivery it may overlap is a late
  attempt of a deliverer that outlived its lease (the claim that buried the event counted
  it as never settled): a second delivery at-least-once already allows. That attempt's
  settlement cannot undo the retry: a failure acts only on the event's latest attempt
  number while it is queued, a success forgets the event, as delivered.
- Only dead events are purged: a pending one is on its way and must not vanish unsaid.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from opay.persistence import keys
from opay.persistence.positions import Collected, Position, Positions

Status = Literal["pending", "dead"]

# KEYS: due, dead, events, attempts. ARGV: id, now ms.
_RETRY = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'pending' end
  return 'absent'
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 'retried'
"""

# KEYS: dead, events, attempts, errors, due. ARGV[1]: how many of the oldest dead to
# purge, unless ARGV[2], one id, is given. Returns how many were purged; -1: that id is pending.
_PURGE = """
local ids
if #ARGV == 1 then ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1) else ids = {ARGV[2]} end
local purged = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    purged = purged + 1
  elseif redis.call('ZSCORE', KEYS[5], id) then
    return -1
  end
end
return purged
"""
# Dead events one purge script removes at most (a purge of all runs it until none is left).
PURGE_BATCH = 1000


class Stored(msgspec.Struct, frozen=True):
    """One event as the outbox holds it; `body` None when it is gone meanwhile."""

    id: str
    status: Status
    at_ms: int  # pending: when it is due next; dead: when it died
    body: bytes | None
    attempts: int
    last_error: str | None


class WebhookEvents:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._positions = Positions(client)
        self._retry = client.register_script(_RETRY)
        self._purge = client.register_script(_PURGE)

    def _set(self, status: Status) -> str:
        return keys.WEBHOOK_DUE if status == "pending" else keys.WEBHOOK_DEAD

    async def listed(self, status: Status, cursor: Position | None, direction: str, count: int) -> Collected[Stored]:
        """A page of one status, in due order (pending) or in order of death (dead)."""

        async def load(entries: list[Position]) -> list[Stored | None]:
            return [None if event.body is None else event for event in await self._read(status, entries)]

        return await self._positions.collect(self._set(status), cursor, direction, count, load)

    async def get(self, event_id: str) -> Stored | None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zscore(keys.WEBHOOK_DUE, event_id).zscore(keys.WEBHOOK_DEAD, event_id)
            due, dead = await pipe.execute()
        if due is None and dead is None:
            return None
        status: Status = "pending" if due is not None else "dead"
        [event] = await self._read(status, [Position(int(due if due is not None else dead), event_id)])
        return None if event.body is None else event

    async def _read(self, status: Status, entries: list[Position]) -> list[Stored]:
        ids = [entry.member for entry in entries]
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.WEBHOOK_EVENTS, ids).hmget(keys.WEBHOOK_ATTEMPTS, ids).hmget(keys.WEBHOOK_ERRORS, ids)
            bodies, attempts, errors = await pipe.execute()
        return [
            Stored(entry.member, status, entry.score, body, int(tries or 0), None if error is None else error.decode(errors="replace"))
            for entry, body, tries, error in zip(entries, bodies, attempts, errors)
        ]

    async def retry(self, event_id: str, now_ms: int) -> Literal["retried", "pending", "absent"]:
        """A dead event back in the queue, due now, its attempts counted from zero."""
        outcome = await self._retry(keys=[keys.WEBHOOK_DUE, keys.WEBHOOK_DEAD, keys.WEBHOOK_EVENTS, keys.WEBHOOK_ATTEMPTS], args=[event_id, now_ms])
        return outcome.decode()

    async def purge(self, event_id: str) -> Literal["purged", "pending", "absent"]:
        """One dead event forgotten: its body, attempts and error with it."""
        purged = int(await self._purge(keys=self._purge_keys(), args=[PURGE_BATCH, event_id]))
        return "purged" if purged == 1 else "pending" if purged < 0 else "absent"

    async def purge_dead(self) -> int:
        """Every dead event, in batches (each one script): how many were purged. Bounded
        by the count when it started, so events dying meanwhile cannot keep it going."""
        batches = math.ceil(await self._client.zcard(keys.WEBHOOK_DEAD) / PURGE_BATCH)
        purged = 0
        for _ in range(batches):
            removed = int(await self._purge(keys=self._purge_keys(), args=[PURGE_BATCH]))
            purged += removed
            if removed < PURGE_BATCH:
                break
        return purged

    def _purge_keys(self) -> list[str]:
        return [keys.WEBHOOK_DEAD, keys.WEBHOOK_EVENTS, keys.WEBHOOK_ATTEMPTS, keys.WEBHOOK_ERRORS, keys.WEBHOOK_DUE]
