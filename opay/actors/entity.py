"""Entity hosting inside a shard: activation, one-at-a-time application, group commit, passivation.

A shard applies a batch of commands. Commands are grouped by entity (each entity's
mailbox for this batch) and applied in arrival order, one at a time, against that
entity's in-memory state. All changed snapshots are then written in one pipelined
round trip, and only then are replies released and the new states made current: a
reply never reflects state that Redis does not hold.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from typing import Callable

import msgspec
import redis

from opay.actors.messages import CONFLICT_RETRY, UNAVAILABLE, BatchResult, Command, Failed, Reply, Tell
from opay.persistence import codec, keys
from opay.persistence.snapshots import CONFLICT, LANDED, EntityWrite, SideEffect, SnapshotStore


log = logging.getLogger("opay.entities")

INTERNAL = Failed("unavailable", "internal_error", "the resource could not process this command; nothing changed")
QUARANTINED = Failed(
    "internal", "quarantined", "this resource's stored state cannot be read; it is set aside for the operator and nothing changed"
)


class Active(msgspec.Struct):
    version: int
    state: codec.EntityState
    journal: dict[str, bytes]


class Event(msgspec.Struct, frozen=True):
    """A webhook event in the outbox: the entity's state as it was when it happened."""

    id: str
    type: str
    created_at_ms: int
    state: codec.EntityState


class Step:
    """What one command does to one entity: a reply, maybe a new state, maybe side effects."""

    def __init__(
        self,
        entity_id: str,
        now_ms: int,
        state: object,
        journal: dict[str, bytes],
        pending: dict[str, bytes],
        emit_events: bool = False,
        shard: int = 0,
    ) -> None:
        self.entity_id = entity_id
        self._shard = shard
        self._emit_events = emit_events
        self.now_ms = now_ms
        self.state = state
        self.reply: Reply | None = None
        self.effects: list[SideEffect] = []
        self.tells: list[Tell] = []
        self._journal = journal
        self._pending = pending

    def journal_entry(self, key: str) -> bytes | None:
        return self._pending.get(key, self._journal.get(key))

    def record(self, key: str, outcome: bytes) -> None:
        self._pending[key] = outcome
        self.effects.append(SideEffect("hset", keys.journal(self.entity_id), key, outcome))

    def tell(self, command: Command, *, answer_me: bool = True) -> None:
        """Ask another entity, once this step is committed; the answer comes back as Answered."""
        self.tells.append(Tell(command, self.entity_id if answer_me else None))

    def due(self, at_ms: int) -> None:
        """Wake this entity at `at_ms` (timers survive restarts: the due set is in Redis).
        Setting its own due time ends the timers' backoff for it."""
        self.effects += [
            SideEffect("zadd", keys.due(self._shard), at_ms, self.entity_id),
            SideEffect("zrem", keys.due_tries(self._shard), b=self.entity_id),
        ]

    def not_due(self) -> None:
        self.effects += [
            SideEffect("zrem", keys.due(self._shard), b=self.entity_id),
            SideEffect("zrem", keys.due_tries(self._shard), b=self.entity_id),
        ]

    def emit(self, event_type: str, state: codec.EntityState) -> None:
        """Queue a webhook event, durably and atomically with this step's state."""
        if not self._emit_events:
            return
        event = Event(str(uuid.uuid4()), event_type, self.now_ms, state)
        self.effects += [
            SideEffect("hset", keys.WEBHOOK_EVENTS, event.id, codec.encode(event)),
            SideEffect("zadd", keys.WEBHOOK_DUE, self.now_ms, event.id),
        ]


Handler = Callable[[Command, object, Step], None]


class EntityHost:
    def __init__(
        self, store: SnapshotStore, handlers: dict[type, Handler], max_active: int, emit_events: bool = False, shard: int = 0
    ) -> None:
        assert max_active > 0 and shard >= 0
        self._shard = shard
        self.quarantined = 0  # snapshots that could not be decoded, since start
        self._emit_events = emit_events
        self._store = store
        self._handlers = handlers
        self._max_active = max_active
        self._active: OrderedDict[str, Active] = OrderedDict()

    @property
    def active_count(self) -> int:
        return len(self._active)

    def handle(self, commands: list[Command], now_ms: int) -> BatchResult:
        replies: list[Reply | None] = [None] * len(commands)
        mailboxes: dict[str, list[int]] = {}
        for position, command in enumerate(commands):
            mailboxes.setdefault(command.entity_id, []).append(position)

        present = self._activate(list(mailboxes), replies, mailboxes)
        writes: list[EntityWrite] = []
        staged: list[tuple[str, Active | None, object, dict[str, bytes]]] = []
        tells: dict[str, list[Tell]] = {}
        for entity_id, positions in mailboxes.items():
            if entity_id not in present:
                continue
            try:
                planned = self._apply(entity_id, present[entity_id], [commands[p] for p in positions], now_ms)
            except Exception:
                # A fault in one entity's rules must not take its batch-mates down with
                # it: this entity's commands fail, its state stays as Redis holds it.
                log.exception("entity %s failed a command batch", entity_id)
                self._active.pop(entity_id, None)
                for position in positions:
                    replies[position] = INTERNAL
                continue
            step_replies, changed, write, pending, asked = planned
            for position, reply in zip(positions, step_replies):
                replies[position] = reply
            if asked:
                tells[entity_id] = asked
            if write is not None:
                writes.append(write)
                staged.append((entity_id, present[entity_id], changed, pending))

        committed = self._commit(writes, staged, replies, mailboxes)
        assert all(reply is not None for reply in replies)
        # A Tell leaves only if what its entity decided is durable; entities that told
        # without writing (e.g. re-asking after a restart) tell from committed state.
        sent = [tell for entity_id, asked in tells.items() if entity_id not in committed or committed[entity_id] for tell in asked]
        return BatchResult(replies, sent)  # type: ignore[arg-type]

    def _apply(
        self, entity_id: str, active: Active | None, mailbox: list[Command], now_ms: int
    ) -> tuple[list[Reply], object, EntityWrite | None, dict[str, bytes], list[Tell]]:
        """One entity's mailbox for this batch, one command at a time: the replies, the new
        state and its write (None if nothing changed), new journal entries, what it tells."""
        state: object = active.state if active else None
        journal = active.journal if active else {}
        pending: dict[str, bytes] = {}
        effects: list[SideEffect] = []
        asked: list[Tell] = []
        replies: list[Reply] = []
        for command in mailbox:
            step = Step(entity_id, now_ms, state, journal, pending, self._emit_events, self._shard)
            self._handlers[type(command)](command, state, step)
            assert step.reply is not None, f"{type(command).__name__} left no reply"
            state = step.state
            effects += step.effects
            asked += step.tells
            replies.append(step.reply)
        before = active.state if active else None
        if state is None or (not effects and state is before):
            return replies, state, None, pending, asked
        version = active.version if active else 0
        return replies, state, EntityWrite(entity_id, version, codec.encode(state), effects), pending, asked

    def _activate(
        self, entity_ids: list[str], replies: list[Reply | None], mailboxes: dict[str, list[int]]
    ) -> dict[str, Active | None]:
        present: dict[str, Active | None] = {}
        missing = []
        for entity_id in entity_ids:
            if entity_id in self._active:
                self._active.move_to_end(entity_id)
                present[entity_id] = self._active[entity_id]
            else:
                missing.append(entity_id)
        try:
            loaded = self._store.load_many(missing)
        except redis.RedisError:
            for entity_id in missing:
                for position in mailboxes[entity_id]:
                    replies[position] = UNAVAILABLE
            return present
        for entity_id, found in loaded.items():
            if found.snapshot is None:
                present[entity_id] = None
                continue
            try:
                state = codec.decode_state(found.snapshot)
            except Exception as error:  # any decoder fault, not only msgspec's
                self._quarantine(entity_id, error, replies, mailboxes[entity_id])
                continue
            active = Active(found.version, state, found.journal)
            present[entity_id] = active
            self._remember(entity_id, active)
        return present

    def _quarantine(self, entity_id: str, error: Exception, replies: list[Reply | None], positions: list[int]) -> None:
        """A snapshot that cannot be decoded fails only its own commands, with a clear
        error, and is named for the operator; its batch-mates go on."""
        self.quarantined += 1
        log.error("entity %s quarantined: its snapshot cannot be decoded: %s", entity_id, error)
        for position in positions:
            replies[position] = QUARANTINED
        try:
            self._store.quarantine(entity_id, f"{type(error).__name__}: {error}")
        except redis.RedisError:
            pass  # the log line and the replies still say it; the next activation records it

    def _commit(
        self,
        writes: list[EntityWrite],
        staged: list[tuple[str, Active | None, object, dict[str, bytes]]],
        replies: list[Reply | None],
        mailboxes: dict[str, list[int]],
    ) -> dict[str, bool]:
        """Whether each written entity's write landed."""
        outcomes = self._store.write_many(writes)
        committed: dict[str, bool] = {}
        for n, (entity_id, active, state, pending) in enumerate(staged):
            committed[entity_id] = outcomes[n] == LANDED
            if committed[entity_id]:
                journal = active.journal if active else {}
                journal.update(pending)
                self._remember(entity_id, Active(writes[n].expected_version + 1, state, journal))  # type: ignore[arg-type]
                continue
            # Conflict: another activation won. Unknown: Redis did not say, twice. Either
            # way forget the entity, so the next command re-reads whatever Redis holds;
            # idempotency keys make the caller's retry safe.
            self._active.pop(entity_id, None)
            failure = CONFLICT_RETRY if outcomes[n] == CONFLICT else UNAVAILABLE
            for position in mailboxes[entity_id]:
                replies[position] = failure
        return committed

    def _remember(self, entity_id: str, active: Active) -> None:
        self._active[entity_id] = active
        self._active.move_to_end(entity_id)
        while len(self._active) > self._max_active:
            # Passivation: the least recently used entity leaves memory; Redis holds it.
            self._active.popitem(last=False)
