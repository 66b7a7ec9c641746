"""Due times live in Redis (a sorted set), so timers survive any restart.

Firing a timer is just another command to the entity, through its mailbox: the entity
decides whether it is really due. The due entry leaves the set atomically with that
entity's write, so a crash between the two cannot lose or double a transition.
"""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio as aioredis

from opay.actors.messages import (
    ExpireIncomingPayment,
    Failed,
    ResumeGrantSpend,
    ResumeOutgoingPayment,
)
from opay.actors.router import ShardRouter
from opay.clock import now_ms
from opay.persistence import keys

log = logging.getLogger("opay.timers")

# By entity-id prefix. A grant is due while a reservation waits for its payment to confirm it.
FIRE = {"ip": ExpireIncomingPayment, "op": ResumeOutgoingPayment, "grant": ResumeGrantSpend}


async def fire_due(client: aioredis.Redis, router: ShardRouter, batch_max: int) -> int:
    due = [member.decode() for member in await client.zrangebyscore(keys.DUE, "-inf", now_ms(), start=0, num=batch_max)]
    replies = await asyncio.gather(*(router.ask(FIRE[entity_id.split(":", 1)[0]](entity_id)) for entity_id in due))
    orphans = [entity_id for entity_id, reply in zip(due, replies) if isinstance(reply, Failed) and reply.kind == "not_found"]
    if orphans:
        await client.zrem(keys.DUE, *orphans)
    return len(due)


async def run(client: aioredis.Redis, router: ShardRouter, interval_seconds: float, batch_max: int) -> None:
    assert interval_seconds > 0 and batch_max > 0
    while True:
        try:
            fired = await fire_due(client, router, batch_max)
        except redis.RedisError as error:
            log.warning("timers paused: %s", error)
            fired = 0
        if fired < batch_max:
            await asyncio.sleep(interval_seconds)
