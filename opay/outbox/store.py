"""The Redis side of webhook delivery: leased claims, settled outcomes, the dead letters.

Entity actors queue an event atomically with the state change it reports, in the outbox
of the shard hosting the entity (keys.Outbox(shard): hash `opay:webhooks:events:{s<n>}`,
due time in sorted set `opay:webhooks:due:{s<n>}`). A deliverer claims a shard's due
events with one Lua script that pushes each claimed event's due time forward by a lease
and counts the attempt, so two front ends never deliver the same attempt at once;
a crashed deliverer's claims simply come due again when the lease runs out. A dead event
is never selected again, so it cannot stall the queue (Rafiki #2664).
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from opay.persistence import keys

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
    """The Redis side of delivery for one shard's outbox (keys.Outbox(shard)): `client` is
    the shard's (ShardClients.of(shard)); every script and transaction here touches only
    that outbox's keys, which share its hash tag."""

    def __init__(self, client: aioredis.Redis, names: keys.Outbox) -> None:
        self._client = client
        self._names = names
        self.shard = names.shard
        self._claim = client.register_script(_CLAIM)
        self._failed = client.register_script(_FAILED)

    async def claim(self, now: int, limit: int, lease_until: int, max_attempts: int) -> list[Claimed]:
        """Due events, at most `limit`, each leased until `lease_until` and its attempt counted."""
        assert limit > 0 and lease_until > now and max_attempts > 0
        names = self._names
        flat = await self._claim(keys=[names.due, names.events, names.attempts, names.dead, names.errors], args=[now, lease_until, limit, max_attempts])
        return [Claimed(flat[i].decode(), int(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)]

    async def delivered(self, event_id: str) -> None:
        """Forget the event entirely (also out of the dead set, if a late success beat its burial)."""
        names = self._names
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(names.due, event_id).zrem(names.dead, event_id)
            pipe.hdel(names.events, event_id).hdel(names.attempts, event_id).hdel(names.errors, event_id)
            await pipe.execute()

    async def failed(self, claimed: Claimed, error: str, now: int, retry_at: int | None) -> bool:
        """Reschedule at `retry_at`, or bury when None. False if the attempt was superseded."""
        args = [claimed.id, claimed.attempt, error[:500], now, "" if retry_at is None else retry_at]
        names = self._names
        return bool(await self._failed(keys=[names.due, names.dead, names.attempts, names.errors], args=args))
