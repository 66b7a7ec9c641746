"""The read side: snapshots straight from Redis, without a Ray hop.

Redis holds every acknowledged state (write-through before reply), so a read here sees
everything a client was ever told happened. A list is kept in parts, one sorted set per
shard (so each part is in its entities' slot on Redis Cluster); a page is the parts' pages
merged in creation order (opay/persistence/positions.py), then the snapshots of the page's
members: two round trips to each shard's node (a filtered page, a bounded few more).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import msgspec

from opay.persistence import keys
from opay.persistence.clients import ShardClients
from opay.persistence.codec import SnapshotCodec
from opay.persistence.positions import Position, Positions, merged

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
    def __init__(self, shards: ShardClients, codec: SnapshotCodec) -> None:
        """`codec`: the entity registry's (opay.actors.registry.codec)."""
        self._shards = shards
        self._codec = codec
        self._positions = [Positions(shards.of(n)) for n in range(shards.count)]

    def _decode(self, raw: bytes, what: str) -> object:
        try:
            return self._codec.decode_state(raw)
        except Exception as error:  # any decoder fault, not only msgspec's
            raise Unreadable(what, error) from None

    async def entity(self, entity_id: str) -> object | None:
        shard = keys.shard_of(entity_id, self._shards.count)
        raw = await self._shards.of(shard).hget(keys.entity(entity_id, shard), "s")
        return None if raw is None else self._decode(raw, entity_id)

    async def ping(self) -> None:
        """Redis answers (GET /readyz): every shard's node; raises a RedisError when one does not."""
        await asyncio.gather(*(self._shards.of(n).ping() for n in range(self._shards.count)))

    async def page(
        self, index: Callable[[int], str], cursor: str | None, direction: str, count: int, keep: Callable[[object], bool] | None = None
    ) -> Page:
        """Up to `count` items after (`first`) or before (`last`) the member `cursor` of the
        list whose part on shard n is the sorted set `index(n)`. Unfiltered, one page of
        the parts. With `keep`, only the states it keeps, read CHUNK at a time and at most
        SCAN_MAX; `has_next`/`has_previous` then say whether the list goes on past the page
        that way, not whether what follows matches (a last page may be empty). The side the
        page was not read towards: whether a cursor led here."""
        assert direction in ("first", "last") and 1 <= count <= 100
        forwards = direction == "first"
        pager = merged([positions.pager(index(n)) for n, positions in enumerate(self._positions)])
        frontier = None if cursor is None else await self._position_of(index, cursor)
        kept: list[tuple[str, object]] = []
        more, budget = True, count if keep is None else SCAN_MAX
        while more and len(kept) < count and budget > 0:
            window = await pager(frontier, direction, count if keep is None else min(CHUNK, budget))
            states = await self._states(window.entries, index)
            more = window.has_next if forwards else window.has_previous
            ordered = list(zip(window.entries, states))
            if not forwards:
                ordered.reverse()
            for position, (entry, state) in enumerate(ordered):
                frontier, budget = entry, budget - 1
                if state is not None and (keep is None or keep(state)):
                    kept.append((entry.member, state))
                    if len(kept) == count:
                        more = more or position < len(ordered) - 1
                        break
            if not window.entries:
                break
        last_read = None if frontier is None else frontier.member
        outer = last_read if more and len(kept) < count else (kept[-1][0] if kept else None)
        inner = kept[0][0] if kept else None
        items = [state for _, state in kept]
        if forwards:
            return Page(items=items, has_previous=cursor is not None, has_next=more, start=inner, end=outer)
        return Page(items=items[::-1], has_previous=more, has_next=cursor is not None, start=outer, end=inner)

    async def _position_of(self, index: Callable[[int], str], member: str) -> Position:
        shard = keys.shard_of(member, self._shards.count)
        score = await self._shards.of(shard).zscore(index(shard), member)
        if score is None:
            raise CursorNotFound(member)
        return Position(int(score), member)

    async def _states(self, entries: list[Position], index: Callable[[int], str]) -> list[object | None]:
        """The stored state of each member (None: its snapshot is gone), a pipeline per shard."""
        by_shard: dict[int, list[int]] = {}
        for n, entry in enumerate(entries):
            by_shard.setdefault(keys.shard_of(entry.member, self._shards.count), []).append(n)

        async def read(shard: int, positions: list[int]) -> list:
            pipe = self._shards.of(shard).pipeline(transaction=False)
            for n in positions:
                pipe.hget(keys.entity(entries[n].member, shard), "s")
            return await pipe.execute()

        states: list[object | None] = [None] * len(entries)
        shards = list(by_shard.items())
        for (shard, positions), raws in zip(shards, await asyncio.gather(*(read(shard, positions) for shard, positions in shards))):
            for n, raw in zip(positions, raws):
                states[n] = None if raw is None else self._decode(raw, f"an item of {index(shard)}")
        return states
