"""The operator's side of the outbox: list pending and dead events, retry a dead one, purge.

The layout is opay/outbox/store.py's, one outbox per shard (keys.Outbox), an event in the
outbox of its entity's shard only: its body in the events hash, its attempt count and
last error in their hashes, its id in exactly one of the due set (pending: scored by when
a deliverer next takes it, a running attempt's lease end included) and the dead set
(scored by when it died). A list is the shards' sets merged; an event is looked for in
every shard. Every change here is one script on one shard's outbox, so it is atomic with
the deliverers' claims and settlements (and within one hash tag on Redis Cluster):

- A dead event is selected by no claim, so retrying it (dead -> due now, attempts reset)
  starts a delivery no one else is making. The one delivery it may overlap is a late
  attempt of a deliverer that outlived its lease (the claim that buried the event counted
  it as never settled): a second delivery at-least-once already allows. That attempt's
  settlement cannot undo the retry: a failure acts only on the event's latest attempt
  number while it is queued, a success forgets the event, as delivered.
- Only dead events are purged: a pending one is on its way and must not vanish unsaid.
"""

from __future__ import annotations

import asyncio
import math
from typing import Awaitable, Callable, Literal, TypeVar

import msgspec

from opay.persistence import keys
from opay.persistence.clients import ShardClients
from opay.persistence.positions import Collected, Pager, Position, PositionPage, Positions, collect, merged

Status = Literal["pending", "dead"]
T = TypeVar("T")

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
    """The outboxes of every shard, seen as one: each event lives in exactly one of them
    (its entity's shard's), and every operation on an event, or on several of one shard,
    is sent to that shard's client, touching only its outbox's keys (one hash tag)."""

    def __init__(self, shards: ShardClients) -> None:
        self._count = shards.count
        self._clients = [shards.of(n) for n in range(shards.count)]
        self._names = [keys.Outbox(n) for n in range(shards.count)]
        self._positions = [Positions(client) for client in self._clients]
        self._retry = [client.register_script(_RETRY) for client in self._clients]
        self._purge = [client.register_script(_PURGE) for client in self._clients]

    def _set(self, shard: int, status: Status) -> str:
        return self._names[shard].due if status == "pending" else self._names[shard].dead

    async def listed(self, status: Status, cursor: Position | None, direction: str, count: int) -> Collected[Stored]:
        """A page of one status over every shard, in due order (pending) or in order of
        death (dead), ties by id: the shards' sets merged (positions.merged)."""
        origin: dict[str, int] = {}  # the shard each id listed so far was read from

        def pager(shard: int) -> Pager:
            of_shard = self._positions[shard].pager(self._set(shard, status))

            async def page(at: Position | None, way: str, many: int) -> PositionPage:
                found = await of_shard(at, way, many)
                origin.update((entry.member, shard) for entry in found.entries)
                return found

            return page

        async def load(entries: list[Position]) -> list[Stored | None]:
            by_shard: dict[int, list[int]] = {}
            for n, entry in enumerate(entries):
                by_shard.setdefault(origin[entry.member], []).append(n)
            parts = list(by_shard.items())
            read = await asyncio.gather(*(self._read(shard, status, [entries[n] for n in at]) for shard, at in parts))
            stored: list[Stored | None] = [None] * len(entries)
            for (_, at), events in zip(parts, read):
                for n, event in zip(at, events):
                    stored[n] = None if event.body is None else event
            return stored

        return await collect(merged([pager(n) for n in range(self._count)]), cursor, direction, count, load)

    async def get(self, event_id: str) -> Stored | None:
        """The event, from whichever shard holds it. None: no shard does (a shard that
        does not answer raises, unless another one holds it)."""
        found = await self._each_shard(lambda shard: self._get(shard, event_id))
        held = [event for event in found if not isinstance(event, BaseException) and event is not None]
        if held:
            return held[0]
        _raise_any(found)
        return None

    async def _get(self, shard: int, event_id: str) -> Stored | None:
        names = self._names[shard]
        async with self._clients[shard].pipeline(transaction=True) as pipe:
            pipe.zscore(names.due, event_id).zscore(names.dead, event_id)
            pipe.hget(names.events, event_id).hget(names.attempts, event_id).hget(names.errors, event_id)
            due, dead, body, tries, error = await pipe.execute()
        if (due is None and dead is None) or body is None:
            return None
        status: Status = "pending" if due is not None else "dead"
        return _stored(Position(int(due if due is not None else dead), event_id), status, body, tries, error)

    async def _read(self, shard: int, status: Status, entries: list[Position]) -> list[Stored]:
        names = self._names[shard]
        ids = [entry.member for entry in entries]
        async with self._clients[shard].pipeline(transaction=True) as pipe:
            pipe.hmget(names.events, ids).hmget(names.attempts, ids).hmget(names.errors, ids)
            bodies, attempts, errors = await pipe.execute()
        return [_stored(entry, status, body, tries, error) for entry, body, tries, error in zip(entries, bodies, attempts, errors)]

    async def retry(self, event_id: str, now_ms: int) -> Literal["retried", "pending", "absent"]:
        """A dead event back in its shard's queue, due now, its attempts counted from zero.
        Asked of every shard: only the one holding the event finds it."""

        async def retry(shard: int) -> str:
            names = self._names[shard]
            outcome = await self._retry[shard](keys=[names.due, names.dead, names.events, names.attempts], args=[event_id, now_ms])
            return outcome.decode()

        outcomes = await self._each_shard(retry)
        for found in ("retried", "pending"):
            if found in outcomes:
                return found  # type: ignore[return-value]
        _raise_any(outcomes)
        return "absent"

    async def purge(self, event_id: str) -> Literal["purged", "pending", "absent"]:
        """One dead event forgotten: its body, attempts and error with it. Asked of every
        shard: only the one holding the event finds it."""

        async def purge(shard: int) -> int:
            return int(await self._purge[shard](keys=self._purge_keys(shard), args=[PURGE_BATCH, event_id]))

        outcomes = await self._each_shard(purge)
        if 1 in outcomes:
            return "purged"
        if -1 in outcomes:
            return "pending"
        _raise_any(outcomes)
        return "absent"

    async def purge_dead(self) -> int:
        """Every dead event of every shard, in batches (each one script on one shard): how
        many were purged. Each shard's is bounded by its count when it started, so events
        dying meanwhile cannot keep it going. A shard that does not answer raises, once
        the others' purges are done (a purge again finishes it)."""

        async def purge_shard(shard: int) -> int:
            batches = math.ceil(await self._clients[shard].zcard(self._names[shard].dead) / PURGE_BATCH)
            purged = 0
            for _ in range(batches):
                removed = int(await self._purge[shard](keys=self._purge_keys(shard), args=[PURGE_BATCH]))
                purged += removed
                if removed < PURGE_BATCH:
                    break
            return purged

        counts = await self._each_shard(purge_shard)
        _raise_any(counts)
        return sum(counts)

    async def depth(self) -> tuple[int, int]:
        """(pending, dead) webhook events over every shard: one round trip to each, all at once."""

        async def depth(shard: int) -> tuple[int, int]:
            names = self._names[shard]
            async with self._clients[shard].pipeline(transaction=False) as pipe:
                pending, dead = await pipe.zcard(names.due).zcard(names.dead).execute()
            return int(pending), int(dead)

        found = await asyncio.gather(*(depth(n) for n in range(self._count)))
        return sum(pending for pending, _ in found), sum(dead for _, dead in found)

    def _purge_keys(self, shard: int) -> list[str]:
        names = self._names[shard]
        return [names.dead, names.events, names.attempts, names.errors, names.due]

    async def _each_shard(self, ask: Callable[[int], Awaitable[T]]) -> list[T | BaseException]:
        """`ask` of every shard at once; a shard's failure is its answer, raised by the
        caller only if the others' answers do not settle the question."""
        return await asyncio.gather(*(ask(n) for n in range(self._count)), return_exceptions=True)


def _stored(entry: Position, status: Status, body: bytes | None, tries: bytes | None, error: bytes | None) -> Stored:
    return Stored(entry.member, status, entry.score, body, int(tries or 0), None if error is None else error.decode(errors="replace"))


def _raise_any(answers: list) -> None:
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
