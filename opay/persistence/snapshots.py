"""Versioned entity snapshots: batched loads and group-committed, compare-and-set writes.

A write carries the version the entity last read. The Lua script applies the snapshot
and its side effects (indexes, due times, journal entries) only if the stored version
still matches, so two activations of one entity after a failover cannot both win, and
a stale version never overwrites a newer one. A batch of writes is one round trip.

Each write also carries a write id, stored beside the version. A write sent again after
it landed (redis-py resends a pipeline whose reply timed out; the host asks again after
an error) finds the version one ahead and its own id there, and is reported as landed,
not as a conflict. Outcomes are per entity: one failed write never hides the others.
"""

from __future__ import annotations

import os
import time

import msgspec
import redis

from opay.observability.tally import Buckets
from opay.persistence import keys
from opay.persistence.clients import NotReplicated

# KEYS[1] the entity hash; KEYS[2..] one key per side effect.
# ARGV[1] expected version, ARGV[2] new version, ARGV[3] snapshot, ARGV[4] write id,
# then per side effect: op, a, b.
# `hincrby` adds the decimal b to the hash field a exactly, in decimal strings (Redis's
# HINCRBY stops at 2^63 - 1 and Lua's numbers are doubles: a total of uint64 amounts
# needs neither bound nor rounding).
_WRITE = """
local function add_decimal(x, y)
  local out, i, j, carry = {}, #x, #y, 0
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(x, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(y, j) - 48; j = j - 1 end
    out[#out + 1] = string.char(48 + d % 10)
    carry = math.floor(d / 10)
  end
  return string.reverse(table.concat(out))
end
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  if current == ARGV[2] and redis.call('HGET', KEYS[1], 'w') == ARGV[4] then
    return {1, current}
  end
  return {0, current}
end
-- Checked before anything is written: a script's writes are not rolled back by an error.
for i = 2, #KEYS do
  local op = ARGV[5 + (i - 2) * 3]
  if op ~= 'zadd' and op ~= 'zrem' and op ~= 'hset' and op ~= 'hincrby' then
    return redis.error_reply('unknown side effect ' .. tostring(op))
  end
  if op == 'hincrby' then
    local by = ARGV[7 + (i - 2) * 3]
    local total = redis.call('HGET', KEYS[i], ARGV[6 + (i - 2) * 3])
    if #by > 20 or not string.match(by, '^%d+$') or (total and not string.match(total, '^%d+$')) then
      return redis.error_reply('hincrby needs decimal digits: ' .. KEYS[i])
    end
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 'w', ARGV[4])
for i = 2, #KEYS do
  local at = 5 + (i - 2) * 3
  local op, a, b = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  if op == 'zadd' then
    redis.call('ZADD', KEYS[i], a, b)
  elseif op == 'zrem' then
    redis.call('ZREM', KEYS[i], b)
  elseif op == 'hincrby' then
    redis.call('HSET', KEYS[i], a, add_decimal(redis.call('HGET', KEYS[i], a) or '0', b))
  else
    redis.call('HSET', KEYS[i], a, b)
  end
end
return {1, ARGV[2]}
"""


class SideEffect(msgspec.Struct, frozen=True, array_like=True):
    op: str  # zadd | zrem | hset | hincrby (b: a decimal uint64, added exactly to field a)
    key: str
    a: str | bytes | int = ""
    b: str | bytes = ""


class EntityWrite(msgspec.Struct, frozen=True):
    entity_id: str
    expected_version: int
    snapshot: bytes
    effects: list[SideEffect]
    # Unique per write: how a write sent twice is recognised as having landed.
    write_id: bytes = msgspec.field(default_factory=lambda: os.urandom(12))


# What became of one write: it landed, the stored version had moved on (another
# activation won), or unknown (Redis did not say; the entity must be re-read).
LANDED, CONFLICT, UNKNOWN = "landed", "conflict", "unknown"


# A journal is read whole at activation only if one HSCAN of this COUNT ends it: then a
# key missing from what was read is known absent, and a command with a fresh idempotency
# key costs no read. A larger journal (an incoming payment with thousands of operator
# credits) is never loaded whole: its entries are read per key, the ones a batch names.
JOURNAL_WHOLE_MAX = 128


class Loaded(msgspec.Struct, frozen=True):
    version: int
    snapshot: bytes | None
    # The journal entries read: every one if `whole`, else only those asked for (None:
    # known absent).
    journal: dict[str, bytes | None]
    whole: bool = False


class SnapshotStore:
    """One shard's entities. Used from inside the shard actor, one batch at a time: a
    blocking client is right (on Redis Cluster, pinned to the shard's tag: a group commit
    is one round trip to one node)."""

    def __init__(
        self, client: redis.Redis, shard: int = 0, write_seconds: Buckets | None = None, *, wait_replicas: int = 0, wait_ms: int = 0
    ) -> None:
        """`wait_replicas`: a write counts as landed only once that many replicas hold it
        (WAIT, at most `wait_ms`), else its fate is unknown (Redis Cluster)."""
        assert shard >= 0 and wait_replicas >= 0 and (wait_replicas == 0 or wait_ms > 0)
        self._client = client
        self.shard = shard
        self._write = client.register_script(_WRITE)
        self._write_seconds = write_seconds  # each group commit's time, the confirming read included
        self._wait = (wait_replicas, wait_ms)

    def load_many(self, entity_ids: list[str]) -> dict[str, Loaded]:
        return self.load(entity_ids, {})[0]

    def load(
        self, entity_ids: list[str], wanted: dict[str, list[str]]
    ) -> tuple[dict[str, Loaded], dict[str, dict[str, bytes | None]]]:
        """One pipelined round trip: the snapshots of `entity_ids` (each with its journal
        whole if small, else the entries `wanted` names for it), and the `wanted` journal
        entries of entities already active (those not in `entity_ids`)."""
        loading = set(entity_ids)
        others = [entity_id for entity_id, names in wanted.items() if names and entity_id not in loading]
        if not entity_ids and not others:
            return {}, {}
        pipe = self._client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hmget(keys.entity(entity_id, self.shard), "v", "s")
            pipe.hscan(keys.journal(entity_id, self.shard), 0, count=JOURNAL_WHOLE_MAX)
            if wanted.get(entity_id):
                pipe.hmget(keys.journal(entity_id, self.shard), wanted[entity_id])
        for entity_id in others:
            pipe.hmget(keys.journal(entity_id, self.shard), wanted[entity_id])
        answers = iter(self._read(pipe))
        loaded: dict[str, Loaded] = {}
        for entity_id in entity_ids:
            (version, snapshot), (cursor, scanned) = next(answers), next(answers)
            named = wanted.get(entity_id) or []
            values = next(answers) if named else []
            journal: dict[str, bytes | None]
            if int(cursor) == 0 and len(scanned) <= JOURNAL_WHOLE_MAX:
                journal, whole = {k.decode(): v for k, v in scanned.items()}, True
            else:
                # Too large to hold: what was scanned is dropped, only the named entries stay.
                journal, whole = dict(zip(named, values)), False
            loaded[entity_id] = Loaded(version=int(version or 0), snapshot=snapshot, journal=journal, whole=whole)
        entries = {entity_id: dict(zip(wanted[entity_id], next(answers))) for entity_id in others}
        return loaded, entries

    def journal_entry(self, entity_id: str, key: str) -> bytes | None:
        """One entry read on demand: a key that no command of the batch named in advance."""
        (found,) = self._read(self._client.pipeline(transaction=False).hget(keys.journal(entity_id, self.shard), key))
        return found

    def _read(self, pipe: redis.client.Pipeline) -> list:
        """A pipeline of reads, fenced: its answers once the replicas hold all it saw."""
        answers, replicated = self._execute(pipe, fence=True)
        if not replicated:
            raise NotReplicated(f"shard {self.shard}: what was read is not on {self._wait[0]} replica(s) yet")
        return answers

    def _execute(self, pipe: redis.client.Pipeline, *, fence: bool, raise_on_error: bool = True) -> tuple[list, bool]:
        """The pipeline's answers, and whether the replicas hold what it wrote (always so off
        a Redis Cluster). There it ends with WAIT, on the connection that sent the rest (a
        pipeline is one connection). `fence`: a counter write before the WAIT, so that it
        covers what the pipeline read too: a read may see a write the master holds alone
        (its writer heard "unknown"), and acting on it would acknowledge what a failover
        can take back."""
        replicas, wait_ms = self._wait
        if not replicas:
            return pipe.execute(raise_on_error=raise_on_error), True
        if fence:
            pipe.incr(keys.fence(self.shard))
        pipe.execute_command("WAIT", replicas, wait_ms)
        answers = pipe.execute(raise_on_error=raise_on_error)
        waited = answers[-1]
        return answers[: len(answers) - 1 - fence], not isinstance(waited, Exception) and int(waited) >= replicas

    def quarantine(self, entity_id: str, reason: str) -> None:
        self._client.hset(keys.quarantine(self.shard), entity_id, reason[:1000])

    def write_many(self, writes: list[EntityWrite]) -> list[str]:
        """LANDED, CONFLICT or UNKNOWN per write, in order. Writes whose fate the first
        round trip left unknown are asked about once more before UNKNOWN is reported."""
        if not writes:
            return []
        started = time.perf_counter()
        try:
            answers, replicated = self._evalsha_many(writes)
        except redis.RedisError as error:
            answers, replicated = [error] * len(writes), False
        unloaded = [n for n, answer in enumerate(answers) if isinstance(answer, redis.exceptions.NoScriptError)]
        if unloaded:
            # Redis restarted (or flushed its scripts): a NOSCRIPT write did nothing, so
            # loading the script and sending exactly those again is safe.
            try:
                self._client.script_load(_WRITE)
                again, replicated_again = self._evalsha_many([writes[n] for n in unloaded])
            except redis.RedisError as error:
                again, replicated_again = [error] * len(unloaded), False
            replicated = replicated and replicated_again
            for n, answer in zip(unloaded, again):
                answers[n] = answer
        outcomes = [UNKNOWN if isinstance(answer, Exception) else LANDED if int(answer[0]) == 1 else CONFLICT for answer in answers]
        if LANDED in outcomes and not replicated:
            # On the master only: a failover now would lose it, so nobody may be told it
            # landed. Asking again would only read the master's word: unknown it stays.
            return self._observed(started, [UNKNOWN if outcome == LANDED else outcome for outcome in outcomes])
        unknown = [n for n, outcome in enumerate(outcomes) if outcome == UNKNOWN]
        if unknown:
            for n, outcome in zip(unknown, self._confirm([writes[n] for n in unknown])):
                outcomes[n] = outcome
        return self._observed(started, outcomes)

    def _observed(self, started: float, outcomes: list[str]) -> list[str]:
        if self._write_seconds is not None:
            self._write_seconds.observe(time.perf_counter() - started)
        return outcomes

    def _confirm(self, writes: list[EntityWrite]) -> list[str]:
        """Whether writes of unknown fate landed: the stored version and write id say."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for write in writes:
                pipe.hmget(keys.entity(write.entity_id, self.shard), "v", "w")
            found = self._read(pipe)
        except redis.RedisError:  # NotReplicated too: the master's word alone says nothing
            return [UNKNOWN] * len(writes)
        outcomes = []
        for write, (version, write_id) in zip(writes, found):
            if version is not None and int(version) == write.expected_version + 1 and write_id == write.write_id:
                outcomes.append(LANDED)
            elif int(version or 0) == write.expected_version:
                # Not applied, and it can no longer be: this write is not being resent.
                outcomes.append(UNKNOWN)
            else:
                outcomes.append(CONFLICT)
        return outcomes

    def _evalsha_many(self, writes: list[EntityWrite]) -> tuple[list, bool]:
        # EVALSHA straight into the pipeline: a Script object in a pipeline makes redis-py
        # send SCRIPT EXISTS first, a second round trip per batch.
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            effect_keys = [effect.key for effect in write.effects]
            effect_args: list[str | bytes | int] = []
            for effect in write.effects:
                effect_args += [effect.op, effect.a, effect.b]
            pipe.evalsha(
                self._write.sha,
                1 + len(effect_keys),
                keys.entity(write.entity_id, self.shard),
                *effect_keys,
                write.expected_version,
                write.expected_version + 1,
                write.snapshot,
                write.write_id,
                *effect_args,
            )
        return self._execute(pipe, fence=False, raise_on_error=False)
