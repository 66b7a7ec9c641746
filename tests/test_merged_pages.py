"""A list kept in parts, one sorted set per shard, pages exactly as the one set it replaced
(persistence/positions.merged): the same entries, the same hasPreviousPage/hasNextPage,
from every cursor both ways, with score ties across the parts and cursors that name no
member any more. The reference is the positions script on one set holding everything."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from opay.persistence.positions import Position, Positions, merged

pytestmark = pytest.mark.anyio

PARTS = 3
MEMBERS = 40


async def test_merged_parts_page_as_the_one_set(embedded) -> None:
    client = aioredis.Redis.from_url(embedded.url)
    try:
        rng = random.Random(5)
        # Scores from a few milliseconds only: many ties, inside a part and across parts.
        entries = [Position(rng.randint(1, 6), f"{rng.getrandbits(64):016x}") for _ in range(MEMBERS)]
        whole, parts = "t:whole", [f"t:part:{n}" for n in range(PARTS)]
        for n, entry in enumerate(entries):
            await client.zadd(whole, {entry.member: entry.score})
            await client.zadd(parts[n % PARTS], {entry.member: entry.score})
        positions = Positions(client)
        one = positions.pager(whole)
        many = merged([positions.pager(part) for part in parts])
        ordered = sorted(entries)
        gone = [Position(score, member) for score, member in ((3, "0" * 16), (3, "f" * 16), (0, "8" * 16), (9, "8" * 16))]
        cursors: list[Position | None] = [None, *ordered, *gone]
        compared = 0
        for cursor in cursors:
            for direction in ("first", "last"):
                for count in (1, 3, 7, 100):
                    expected, got = await one(cursor, direction, count), await many(cursor, direction, count)
                    assert got == expected, (cursor, direction, count)
                    compared += 1
        assert compared == len(cursors) * 8
        # And the pages do cover the list: a walk forwards by 7 meets every entry once, in order.
        walked: list[Position] = []
        cursor = None
        while True:
            page = await many(cursor, "first", 7)
            walked += page.entries
            if not page.has_next:
                break
            cursor = page.entries[-1]
        assert walked == ordered
    finally:
        await client.aclose()
