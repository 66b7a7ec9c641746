"""Versioned entity snapshots: batched loads and group-committed, compare-and-set writes.

A write carries the version the entity last read. The Lua script applies the snapshot
and its side effects (indexes, due times, journal entries) only if the stored version
still matches, so two activations of one entity after a failover cannot both win, and
a stale version never overwrites a newer one. A batch of writes is one round trip.
"""

from __future__ import annotations

import msgspec
import redis

from opay.persistence import keys

# KEYS[1] the entity hash; KEYS[2..] one key per side effect.
# ARGV[1] expected version, ARGV[2] new version, ARGV[3] snapshot,
# then per side effect: op, a, b.
_WRITE = """
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
for i = 2, #KEYS do
  local at = 4 + (i - 2) * 3
  local op, a, b = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  if op == 'zadd' then
    redis.call('ZADD', KEYS[i], a, b)
  elseif op == 'zrem' then
    redis.call('ZREM', KEYS[i], b)
  elseif op == 'hset' then
    redis.call('HSET', KEYS[i], a, b)
  else
    return redis.error_reply('unknown side effect ' .. tostring(op))
  end
end
return {1, ARGV[2]}
"""


class SideEffect(msgspec.Struct, frozen=True, array_like=True):
    op: str  # zadd | zrem | hset
    key: str
    a: str | bytes | int = ""
    b: str | bytes = ""


class EntityWrite(msgspec.Struct, frozen=True):
    entity_id: str
    expected_version: int
    snapshot: bytes
    effects: list[SideEffect]


class Loaded(msgspec.Struct, frozen=True):
    version: int
    snapshot: bytes | None
    journal: dict[str, bytes]


class SnapshotStore:
    """Used from inside a shard actor, one batch at a time: a blocking client is right."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._write = client.register_script(_WRITE)

    def load_many(self, entity_ids: list[str]) -> dict[str, Loaded]:
        if not entity_ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hmget(keys.entity(entity_id), "v", "s")
            pipe.hgetall(keys.journal(entity_id))
        answers = pipe.execute()
        loaded: dict[str, Loaded] = {}
        for n, entity_id in enumerate(entity_ids):
            (version, snapshot), journal = answers[2 * n], answers[2 * n + 1]
            loaded[entity_id] = Loaded(
                version=int(version or 0),
                snapshot=snapshot,
                journal={k.decode(): v for k, v in journal.items()},
            )
        return loaded

    def write_many(self, writes: list[EntityWrite]) -> list[bool]:
        """True per write that committed; False where the stored version had moved on."""
        if not writes:
            return []
        answers = self._evalsha_many(writes)
        unloaded = [n for n, answer in enumerate(answers) if isinstance(answer, redis.exceptions.NoScriptError)]
        if unloaded:
            # Redis restarted (or flushed its scripts): a NOSCRIPT write did nothing, so
            # loading the script and sending exactly those again is safe.
            self._client.script_load(_WRITE)
            for n, answer in zip(unloaded, self._evalsha_many([writes[n] for n in unloaded])):
                answers[n] = answer
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return [int(answer[0]) == 1 for answer in answers]

    def _evalsha_many(self, writes: list[EntityWrite]) -> list:
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
                keys.entity(write.entity_id),
                *effect_keys,
                write.expected_version,
                write.expected_version + 1,
                write.snapshot,
                *effect_args,
            )
        return pipe.execute(raise_on_error=False)
