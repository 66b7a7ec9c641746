"""The read side: snapshots straight from Redis, without a Ray hop.

Redis holds every acknowledged state (write-through before reply), so a read here sees
everything a client was ever told happened. A page of a list is one round trip.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from opay.persistence import keys
from opay.persistence.codec import SnapshotCodec

# KEYS[1] the index. ARGV: cursor ('' for none), direction ('first' | 'last'), count.
# Returns {start rank, total, snapshot...}; start -1 when the cursor is not in the index.
_PAGE = """
local total = redis.call('ZCARD', KEYS[1])
local count = tonumber(ARGV[3])
local start, stop
if ARGV[1] == '' then
  if ARGV[2] == 'first' then start = 0 else start = math.max(total - count, 0) end
else
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if not rank then return {-1, total} end
  if ARGV[2] == 'first' then start = rank + 1 else start = math.max(rank - count, 0) end
  if ARGV[2] == 'last' and rank - count < 0 then count = rank end
end
stop = start + count - 1
local out = {start, total}
if count <= 0 then return out end
local ids = redis.call('ZRANGE', KEYS[1], start, stop)
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGET', 'opay:e:' .. id, 's') or ''
end
return out
"""
assert keys.entity("x") == "opay:e:x", "the page script hard-codes the entity key shape"


class Page(msgspec.Struct, frozen=True):
    items: list  # entity states
    has_previous: bool
    has_next: bool


class CursorNotFound(Exception):
    pass


class Unreadable(Exception):
    """A stored snapshot that cannot be decoded: the shard quarantines it; a read says so."""

    def __init__(self, what: str, error: Exception) -> None:
        super().__init__(f"{what}: {type(error).__name__}: {error}")


class Queries:
    def __init__(self, client: aioredis.Redis, codec: SnapshotCodec) -> None:
        """`codec`: the entity registry's (opay.actors.registry.codec)."""
        self._client = client
        self._codec = codec
        self._page = client.register_script(_PAGE)

    def _decode(self, raw: bytes, what: str) -> object:
        try:
            return self._codec.decode_state(raw)
        except Exception as error:  # any decoder fault, not only msgspec's
            raise Unreadable(what, error) from None

    async def entity(self, entity_id: str) -> object | None:
        raw = await self._client.hget(keys.entity(entity_id), "s")
        return None if raw is None else self._decode(raw, entity_id)

    async def webhook_depth(self) -> tuple[int, int]:
        """(pending, dead) webhook events, in one round trip (opay/outbox/store.py's sets)."""
        async with self._client.pipeline(transaction=False) as pipe:
            pending, dead = await pipe.zcard(keys.WEBHOOK_DUE).zcard(keys.WEBHOOK_DEAD).execute()
        return int(pending), int(dead)

    async def page(self, index_key: str, cursor: str | None, direction: str, count: int) -> Page:
        assert direction in ("first", "last") and 1 <= count <= 100
        answer = await self._page(keys=[index_key], args=[cursor or "", direction, count])
        start, total = int(answer[0]), int(answer[1])
        if start < 0:
            raise CursorNotFound(cursor)
        items = [self._decode(raw, f"an item of {index_key}") for raw in answer[2:] if raw]
        stop = start + len(answer) - 2
        return Page(items=items, has_previous=start > 0, has_next=stop < total)
