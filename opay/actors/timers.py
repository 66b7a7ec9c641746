"""Due times live in Redis (a sorted set per shard), so timers survive any restart.

Firing a timer is just another command to the entity, through its mailbox: the entity
decides whether it is really due, and sets its next due time (or clears it) atomically
with its write, so a crash between the two cannot lose or double a transition.

Every front end runs this loop. A pass claims due entries of each shard with a script
that also moves each claimed entry later (a lease, doubling with each firing that left
the entity's due time unset, up to a cap), so two front ends do not fire one entry at
once, and entries that cannot progress (a stopped shard, a broken entity) back off
instead of being taken first every second and starving the others. A pass that made no
progress sleeps.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from opay.actors.ids import prefix_of
from opay.actors.messages import Failed
from opay.actors.registry import FIRE
from opay.actors.router import ShardRouter
from opay.clock import now_ms
from opay.observability import metrics
from opay.persistence import keys
from opay.persistence.clients import ShardClients

log = logging.getLogger("opay.timers")

# FIRE: by entity-id prefix, the command a kind's due time fires (each kind's `timer`).
LEASE_BASE_MS = 2_000
LEASE_MAX_MS = 60_000
# Answers after which an entry is dropped: nothing there, or set aside for the operator.
_GONE = {"not_found", "quarantined"}

# KEYS[1] due set, KEYS[2] tries; ARGV[1] now, ARGV[2] how many, ARGV[3] base, ARGV[4] max.
# Returns a flat list: member, its due time, its tries (1: the first firing of that due time).
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #due, 2 do
  local member = due[i]
  local tries = tonumber(redis.call('ZINCRBY', KEYS[2], 1, member))
  local lease = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ math.min(tries - 1, 30))
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + lease, member)
  out[#out + 1] = member
  out[#out + 1] = due[i + 1]
  out[#out + 1] = tries
end
return out
"""


class Timers:
    def __init__(self, shards: ShardClients, router: ShardRouter, batch_max: int) -> None:
        assert batch_max > 0 and shards.count == router.shard_count
        self._shards = shards
        self._router = router
        self._batch_max = batch_max
        self._claim = shards.of(0).register_script(_CLAIM)  # called with each shard's client

    @property
    def _per_shard(self) -> int:
        return max(1, self._batch_max // self._router.shard_count)

    async def fire_due(self, n: int) -> tuple[int, int]:
        """One pass over shard n's due entries: (entries fired, entries that progressed)."""
        due_key, tries_key = keys.due(n), keys.due_tries(n)
        now = now_ms()
        client = self._shards.of(n)
        flat = await self._claim(keys=[due_key, tries_key], args=[now, self._per_shard, LEASE_BASE_MS, LEASE_MAX_MS], client=client)
        claimed = [m.decode() for m in flat[::3]]
        if not claimed:
            return 0, 0
        # Lag: only first firings; a later try fires at a lease's end, which is backoff, not lag.
        metrics.observe_timer_lags(n, [(now - float(at)) / 1000 for at, tries in zip(flat[1::3], flat[2::3]) if int(tries) == 1])
        commands = {e: FIRE.get(prefix_of(e)) for e in claimed}
        unknown = [e for e, fire in commands.items() if fire is None]
        if unknown:
            log.error("timers: dropping due entries of no known kind: %s", unknown[:10])
        firing = [e for e, fire in commands.items() if fire is not None]
        replies = await asyncio.gather(*(self._router.ask(commands[e](e)) for e in firing))  # type: ignore[misc]
        gone = unknown + [e for e, reply in zip(firing, replies) if isinstance(reply, Failed) and reply.code in _GONE]
        if gone:
            pipe = client.pipeline(transaction=True)
            pipe.zrem(due_key, *gone)
            pipe.zrem(tries_key, *gone)
            await pipe.execute()
        stuck = sum(1 for reply in replies if isinstance(reply, Failed) and reply.kind in ("unavailable", "internal"))
        if stuck:
            log.warning("timers: %d of %d due entries of shard %d did not progress; they back off", stuck, len(claimed), n)
        return len(claimed), len(claimed) - stuck

    async def run(self, interval_seconds: float) -> None:
        """One loop per shard, so a stopped shard delays no other shard's timers."""
        assert interval_seconds > 0
        await asyncio.gather(*(self._run_shard(n, interval_seconds) for n in range(self._router.shard_count)))

    async def _run_shard(self, n: int, interval_seconds: float) -> None:
        while True:
            try:
                fired, progressed = await self.fire_due(n)
            except redis.RedisError as error:
                log.warning("timers of shard %d paused: %s", n, error)
                fired = progressed = 0
            # Straight on only while whole batches are due and moving.
            if fired < self._per_shard or progressed == 0:
                await asyncio.sleep(interval_seconds)
