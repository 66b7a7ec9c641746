"""Pages of a sorted set by position: (score, member) cursors that outlive their member.

The operator's lists (grants, webhook events) page through sets whose members go away
(a grant revoked, an event delivered) or move (a webhook claimed again). A cursor that
is a member's id would stop naming anything then; a position does not: the next page
starts right after (score, member) in the set's own order (score, then member bytes),
whether that member is still there or not. One script call: a page is a snapshot.
"""

from __future__ import annotations

import asyncio
import re
from typing import Awaitable, Callable, Generic, TypeVar

import msgspec
import redis.asyncio as aioredis

# KEYS[1] the set. ARGV: cursor score ('' for none), cursor member, direction
# ('first' | 'last'), count. Returns {start rank, total, member, score, member, score...}.
_PAGE = """
local key, count = KEYS[1], tonumber(ARGV[4])
local total = redis.call('ZCARD', key)
local before, at = 0, 0  -- entries ordered before the cursor; 1 if it is there itself
if ARGV[1] == '' then
  if ARGV[3] == 'first' then before = 0 else before = total end
else
  local s, m = tonumber(ARGV[1]), ARGV[2]
  local found = redis.call('ZSCORE', key, m)
  if found and tonumber(found) == s then
    before, at = redis.call('ZRANK', key, m), 1
  else
    -- Gone or moved: count what sorts before (s, m), ties by member, in bounded steps.
    before = redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[1])
    for offset = 0, tonumber(ARGV[5]) - 1, 100 do
      local ties = redis.call('ZRANGEBYSCORE', key, ARGV[1], ARGV[1], 'LIMIT', offset, 100)
      local passed = 0
      for _, member in ipairs(ties) do
        if member < m then passed = passed + 1 else break end
      end
      before = before + passed
      if passed < 100 then break end
    end
  end
end
local start, stop
if ARGV[3] == 'first' then
  start = before + at
  stop = start + count - 1
else
  stop = before - 1
  start = math.max(before - count, 0)
end
local out = {start, total}
if stop < start then return out end
local found = redis.call('ZRANGE', key, start, stop, 'WITHSCORES')
for _, value in ipairs(found) do out[#out + 1] = value end
return out
"""
# Members sharing the cursor's score that the script walks when the cursor's member is
# gone; past this many (one millisecond's worth of a burst), the page may repeat some.
TIES_MAX = 10_000
COUNT_MAX = 100
# Entries one `collect` reads at most, however many it skips.
SCAN_MAX = 1_000
T = TypeVar("T")

# Members are ids of ours (lowercase UUIDs): the script compares them as Lua strings,
# which sort them as Redis does whatever the server's collation locale.
_CURSOR = re.compile(r"(\d{1,16})\.([0-9a-f-]{1,64})")


class Position(msgspec.Struct, frozen=True, order=True):
    score: int
    member: str

    def cursor(self) -> str:
        return f"{self.score}.{self.member}"


def parse_cursor(text: str) -> Position | None:
    """A cursor as `Position.cursor` writes it; None for anything else."""
    found = _CURSOR.fullmatch(text)
    return None if found is None else Position(int(found[1]), found[2])


class PositionPage(msgspec.Struct, frozen=True):
    entries: list[Position]
    has_previous: bool
    has_next: bool


class Collected(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    first: Position | None  # the first and last positions scanned, kept or not
    last: Position | None
    has_previous: bool
    has_next: bool


class Positions:
    def __init__(self, client: aioredis.Redis) -> None:
        self._page = client.register_script(_PAGE)

    async def page(self, key: str, cursor: Position | None, direction: str, count: int) -> PositionPage:
        """Up to `count` entries right after (`first`) or right before (`last`) the cursor,
        or the set's first or last ones without one; in the set's order either way."""
        assert direction in ("first", "last") and 1 <= count <= COUNT_MAX
        args = ["", "", direction, count, TIES_MAX] if cursor is None else [cursor.score, cursor.member, direction, count, TIES_MAX]
        answer = await self._page(keys=[key], args=args)
        start, total = int(answer[0]), int(answer[1])
        entries = [Position(int(float(answer[i + 1])), answer[i].decode()) for i in range(2, len(answer), 2)]
        return PositionPage(entries, has_previous=start > 0, has_next=start + len(entries) < total)

    def pager(self, key: str) -> Pager:
        return lambda cursor, direction, count: self.page(key, cursor, direction, count)


# A page of positions of one ordered set (or of a union of them: `merged`).
Pager = Callable[[Position | None, str, int], Awaitable[PositionPage]]


def merged(pagers: list[Pager]) -> Pager:
    """Pages of the union of disjoint sorted sets (one per shard) in their common order,
    (score, member): each set's page around the cursor, merged and cut to `count`. A
    cursor needs to be in none of them, so one from any set serves them all."""
    assert pagers
    if len(pagers) == 1:
        return pagers[0]

    async def page(cursor: Position | None, direction: str, count: int) -> PositionPage:
        pages = await asyncio.gather(*(pager(cursor, direction, count) for pager in pagers))
        entries = sorted(entry for one in pages for entry in one.entries)
        before, after = any(one.has_previous for one in pages), any(one.has_next for one in pages)
        if direction == "first":
            return PositionPage(entries[:count], has_previous=before, has_next=after or len(entries) > count)
        return PositionPage(entries[-count:], has_previous=before or len(entries) > count, has_next=after)

    return page


async def collect(
    pager: Pager, cursor: Position | None, direction: str, count: int, load: Callable[[list[Position]], Awaitable[list[T | None]]]
) -> Collected[T]:
    """Up to `count` items where `load` makes one of an entry (None: skip it, as gone
    or filtered out), reading on while skipped entries leave room, at most SCAN_MAX
    entries: a page may be short, and its cursors are the bounds of what was read."""
    items: list[T] = []
    scanned: list[Position] = []
    has_before = has_beyond = False
    first_chunk = True
    while True:
        chunk = await pager(cursor, direction, count - len(items))
        kept = [item for item in await load(chunk.entries) if item is not None] if chunk.entries else []
        behind, beyond = (chunk.has_previous, chunk.has_next) if direction == "first" else (chunk.has_next, chunk.has_previous)
        if first_chunk:
            has_before, first_chunk = behind, False
        has_beyond = beyond
        if direction == "first":
            items, scanned = items + kept, scanned + chunk.entries
        else:
            items, scanned = kept + items, chunk.entries + scanned
        if not chunk.entries or not beyond or len(items) >= count or len(scanned) >= SCAN_MAX:
            break
        cursor = chunk.entries[-1] if direction == "first" else chunk.entries[0]
    has_previous, has_next = (has_before, has_beyond) if direction == "first" else (has_beyond, has_before)
    return Collected(items, scanned[0] if scanned else None, scanned[-1] if scanned else None, has_previous, has_next)
