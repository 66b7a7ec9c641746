"""The read side: snapshots straight from Redis, without a Ray hop.

Redis holds every acknowledged state (write-through before reply), so a read here sees
everything a client was ever told happened. A page of a list is one round trip (a filtered
one, a bounded few).
"""

from __future__ import annotations

from typing import Callable

import msgspec
import redis.asyncio as aioredis

from opay.persistence import keys
from opay.persistence.codec import SnapshotCodec

# KEYS[1] the index. ARGV: cursor ('' for none), direction ('first' | 'last'), count.
# Returns {start rank, total, member, snapshot, ...}; start -1 when the cursor is not in the index.
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
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', 'opay:e:' .. id, 's') or ''
end
return out
"""
assert keys.entity("x") == "opay:e:x", "the page script hard-codes the entity key shape"


# A filtered page reads at most this many snapshots: a filter that matches rarely ends a
# page early (with a cursor to go on from) rather than reading a whole index.
SCAN_MAX = 1000
CHUNK = 100  # snapshots per round trip of a filtered page


class Page(msgspec.Struct, frozen=True):
    items: list  # entity states, in index order
    has_previous: bool
    has_next: bool
    # The index members to go on from: backwards from `start`, forwards from `end`. The
    # first and last item's, except where a filtered page stopped at SCAN_MAX: there, the
    # last member it read (which need not match). None: nothing to go on from.
    start: str | None = None
    end: str | None = None


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

    async def ping(self) -> None:
        """Redis answers (GET /readyz); raises a RedisError when it does not."""
        await self._client.ping()

    async def webhook_depth(self) -> tuple[int, int]:
        """(pending, dead) webhook events, in one round trip (opay/outbox/store.py's sets)."""
        async with self._client.pipeline(transaction=False) as pipe:
            pending, dead = await pipe.zcard(keys.WEBHOOK_DUE).zcard(keys.WEBHOOK_DEAD).execute()
        return int(pending), int(dead)

    async def page(
        self, index_key: str, cursor: str | None, direction: str, count: int, keep: Callable[[object], bool] | None = None
    ) -> Page:
        """Up to `count` items after (`first`) or before (`last`) the member `cursor`.
        Unfiltered, one round trip. With `keep`, only the states it keeps, read CHUNK at a
        time and at most SCAN_MAX; `has_next`/`has_previous` then say whether the index goes
        on past the page that way, not whether what follows matches (a last page may be
        empty). The side the page was not read towards: whether a cursor led here."""
        assert direction in ("first", "last") and 1 <= count <= 100
        forwards = direction == "first"
        kept: list[tuple[str, object]] = []
        frontier, more, budget = cursor, True, count if keep is None else SCAN_MAX
        while more and len(kept) < count and budget > 0:
            chunk, before, after = await self._window(index_key, frontier, direction, count if keep is None else min(CHUNK, budget))
            more = after if forwards else before
            ordered = chunk if forwards else chunk[::-1]
            for position, (member, state) in enumerate(ordered):
                frontier, budget = member, budget - 1
                if state is not None and (keep is None or keep(state)):
                    kept.append((member, state))
                    if len(kept) == count:
                        more = more or position < len(ordered) - 1
                        break
            if not chunk:
                break
        outer = frontier if more and len(kept) < count else (kept[-1][0] if kept else None)
        inner = kept[0][0] if kept else None
        items = [state for _, state in kept]
        if forwards:
            return Page(items=items, has_previous=cursor is not None, has_next=more, start=inner, end=outer)
        return Page(items=items[::-1], has_previous=more, has_next=cursor is not None, start=outer, end=inner)

    async def _window(self, index_key: str, cursor: str | None, direction: str, count: int) -> tuple[list[tuple[str, object | None]], bool, bool]:
        """One round trip: (member, state or None if its snapshot is gone) in index order,
        whether the index holds members before them, and after them."""
        answer = await self._page(keys=[index_key], args=[cursor or "", direction, count])
        start, total = int(answer[0]), int(answer[1])
        if start < 0:
            raise CursorNotFound(cursor)
        pairs = answer[2:]
        members = [
            (pairs[i].decode(), self._decode(pairs[i + 1], f"an item of {index_key}") if pairs[i + 1] else None)
            for i in range(0, len(pairs), 2)
        ]
        return members, start > 0, start + len(members) < total
