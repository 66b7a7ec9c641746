"""Entity hosting inside a shard: activation, one-at-a-time application, group commit, passivation.

A shard applies a batch of commands. Commands are grouped by entity (each entity's
mailbox for this batch) and applied in arrival order, one at a time, against that
entity's in-memory state. All changed snapshots are then written in one pipelined
round trip, and only then are replies released and the new states made current: a
reply never reflects state that Redis does not hold.

What one active entity holds is bounded. Its snapshot is at most SNAPSHOT_MAX_BYTES
(each kind caps its own collections; a write past the bound is refused, never stored).
Its journal (idempotency keys, reservations: one entry per operation, kept for good in
Redis) is not loaded whole: a small one is (one HSCAN that ends, so a fresh key is known
absent without a read), a large one is read per key. The commands of a batch name the
keys they will ask for (`journal_keys`), and those are read in the same pipelined round
trip as the batch's snapshots; a key no command named is read on demand. At most
JOURNAL_HELD_MAX entries per entity stay in memory between batches. Of a journal held
whole, the entries a command has read stay (a working set: ILP dedupe buckets, a grant's
reservations); of those only ever written (an operator credit's outcome, read again only
by a replay) only which keys they are (their hashes): a fresh key is still known absent
without a read, and a replay reads its entry with its batch.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from types import MappingProxyType
from typing import Callable, Mapping

import msgspec
import redis

from opay.actors.ids import EntityIds
from opay.actors.messages import CONFLICT_RETRY, UNAVAILABLE, BatchResult, Command, Failed, Reply, Tell
from opay.outbox.events import Event
from opay.persistence import codec, keys
from opay.persistence.codec import SnapshotCodec, Upgrade
from opay.persistence.snapshots import CONFLICT, JOURNAL_WHOLE_MAX, LANDED, EntityWrite, SideEffect, SnapshotStore


log = logging.getLogger("opay.entities")

INTERNAL = Failed("unavailable", "internal_error", "the resource could not process this command; nothing changed")
QUARANTINED = Failed(
    "internal", "quarantined", "this resource's stored state cannot be read; it is set aside for the operator and nothing changed"
)


# Journal entries (and keys known absent) one active entity keeps between batches.
JOURNAL_HELD_MAX = 256
# The largest snapshot or journal entry an entity may write. Far above what any kind
# writes (a grant ledger at its MAX_RESERVATIONS is ~50 KiB): reaching it is a bug in a
# kind's bounds, refused as one (the entity's commands fail, nothing is stored).
SNAPSHOT_MAX_BYTES = 1 << 20
JOURNAL_ENTRY_MAX_BYTES = 64 << 10
assert JOURNAL_WHOLE_MAX <= JOURNAL_HELD_MAX


class Oversized(Exception):
    """A write past SNAPSHOT_MAX_BYTES or JOURNAL_ENTRY_MAX_BYTES."""


# Field values many entities hold alike: one copy per host (Shared), not one per entity.
SHARED_FIELDS = ("wallet_address", "client", "asset")
SHARED_MAX = 1 << 16  # distinct values remembered; past it the table starts afresh


class Shared:
    """The host's one copy of each value in SHARED_FIELDS: an active entity's state is made
    to hold it in place of its own equal copy (a decoded state's strings and structs are
    its own), which is about half of what a resident incoming payment costs. The values
    are equal, so nothing a state says changes."""

    def __init__(self) -> None:
        self._values: dict[object, object] = {}
        self._fields: dict[type, tuple[str, ...]] = {}

    def share(self, state: object) -> None:
        kind = type(state)
        names = self._fields.get(kind)
        if names is None:
            present = getattr(kind, "__struct_fields__", ())
            names = self._fields[kind] = tuple(name for name in SHARED_FIELDS if name in present)
        for name in names:
            value = getattr(state, name)
            if not isinstance(value, (str, msgspec.Struct)):
                continue  # None: nothing to share
            try:
                kept = self._values.get(value)
            except TypeError:
                continue  # a struct that is not hashable (not frozen, or holding a list)
            if kept is None:
                if len(self._values) >= SHARED_MAX:
                    self._values.clear()
                self._values[value] = kept = value
            if kept is not value:
                msgspec.structs.force_setattr(state, name, kept)


# The journal of every entity that holds no entries between batches: one mapping, not an
# empty dict each. Read-only, so a write to it fails loudly; a batch gives each entity it
# names a dict of its own before anything reads or writes it (EntityHost._activate).
NO_JOURNAL: Mapping[str, bytes | None] = MappingProxyType({})


class Active(msgspec.Struct, gc=False):
    """gc=False: it holds a state, a dict and a tuple, never itself, so it is in no cycle."""

    version: int
    state: object | None  # None: no snapshot yet (never kept between batches)
    # Entries read from (or committed to) Redis; None: known absent from it.
    journal: dict[str, bytes | None]
    # Redis has no entry but those in `journal` or named by `present`: any other key is absent.
    whole: bool
    # Of a whole journal, between batches: hash() of each key Redis has an entry for that no
    # command has read since activation, in place of the entry (a key and its outcome are a
    # few hundred bytes, its hash 36, and a resident incoming payment holds one per credit).
    # A key whose hash is here is read from Redis when asked for: a replay, or two keys of
    # one hash (then it is absent). A hash stays once here, even when its key's entry is
    # read and held again: it may stand for another key too.
    present: tuple[int, ...] = ()

    def held(self) -> None:
        """Trim to the bound between batches: what is dropped is still in Redis."""
        if len(self.journal) + len(self.present) > JOURNAL_HELD_MAX:
            self.whole, self.present = False, ()
            for key in list(self.journal)[: max(0, len(self.journal) - JOURNAL_HELD_MAX)]:
                del self.journal[key]  # type: ignore[attr-defined]
        assert len(self.journal) + len(self.present) <= JOURNAL_HELD_MAX

    def idle(self, read: set[str] | tuple[()] = ()) -> None:
        """Held until its next batch: trimmed; a whole journal keeps the entries in `read`
        (read by a command, this batch or before) and of the others their keys' hashes; an
        empty journal is NO_JOURNAL."""
        if self.whole and self.journal:
            kept = {key: entry for key, entry in self.journal.items() if key in read and entry is not None}
            hashed = {hash(key) for key, entry in self.journal.items() if entry is not None and key not in kept}
            if hashed:
                self.present = tuple(hashed.union(self.present))
            self.journal = kept
        self.held()
        if not self.journal:
            self.journal = NO_JOURNAL  # type: ignore[assignment]

    def may_hold(self, key: str) -> bool:
        """Whether Redis may have an entry for `key` that `journal` does not show."""
        return key not in self.journal and (not self.whole or hash(key) in self.present)


class Step:
    """What one command does to one entity: a reply, maybe a new state, maybe side effects."""

    def __init__(
        self,
        entity_id: str,
        now_ms: int,
        state: object,
        held: Active,
        pending: dict[str, bytes],
        event_state: Callable[[msgspec.Struct], bytes] | None = None,
        shard: int = 0,
        fetch: Callable[[str], bytes | None] | None = None,
        read: set[str] | None = None,
    ) -> None:
        self.entity_id = entity_id
        self.shard = shard  # the shard hosting it: every key its effects touch carries its tag
        self._event_state = event_state  # how an event holds the state (a snapshot); None: no events
        self.now_ms = now_ms
        self.state = state
        self.reply: Reply | None = None
        self.effects: list[SideEffect] = []
        self.tells: list[Tell] = []
        self._held = held  # what the entity holds of its journal: the entries read, and which keys Redis has
        self._pending = pending
        self._read = read  # the keys whose entries this entity's commands read, this batch
        self._fetch = fetch

    def journal_entry(self, key: str) -> bytes | None:
        found = self._entry(key)
        if found is not None and self._read is not None:
            self._read.add(key)
        return found

    def _entry(self, key: str) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        journal = self._held.journal
        if key in journal:
            return journal[key]
        if not self._held.may_hold(key):
            return None
        assert self._fetch is not None, "a journal not held whole needs a way to read it"
        journal[key] = found = self._fetch(key)  # one round trip: `journal_keys` avoids it
        return found

    def record(self, key: str, outcome: bytes) -> None:
        if len(outcome) > JOURNAL_ENTRY_MAX_BYTES:
            raise Oversized(f"journal entry {key!r} of {self.entity_id} is {len(outcome)} bytes")
        self._pending[key] = outcome
        self.effects.append(SideEffect("hset", keys.journal(self.entity_id, self.shard), key, outcome))

    def tell(self, command: Command, *, answer_me: bool = True) -> None:
        """Ask another entity, once this step is committed; the answer comes back as Answered."""
        self.tells.append(Tell(command, self.entity_id if answer_me else None))

    def due(self, at_ms: int) -> None:
        """Wake this entity at `at_ms` (timers survive restarts: the due set is in Redis).
        Setting its own due time ends the timers' backoff for it."""
        self.effects += [
            SideEffect("zadd", keys.due(self.shard), at_ms, self.entity_id),
            SideEffect("zrem", keys.due_tries(self.shard), b=self.entity_id),
        ]

    def not_due(self) -> None:
        self.effects += [
            SideEffect("zrem", keys.due(self.shard), b=self.entity_id),
            SideEffect("zrem", keys.due_tries(self.shard), b=self.entity_id),
        ]

    def emit(self, event_type: str, state: msgspec.Struct) -> None:
        """Queue a webhook event, durably and atomically with this step's state."""
        if self._event_state is None:
            return
        event = Event(str(uuid.uuid4()), event_type, self.now_ms, self._event_state(state))
        outbox = keys.Outbox(self.shard)
        self.effects += [
            SideEffect("hset", outbox.events, event.id, codec.encode(event)),
            SideEffect("zadd", outbox.due, self.now_ms, event.id),
        ]


Handler = Callable[[Command, object, Step], None]
# The journal keys a command will ask for, so the host reads them with the batch's loads.
# A hint only: a key it misses is read on demand, a key it names needlessly costs nothing.
JournalKeys = Callable[[Command], tuple[str, ...]]


class EntityKind(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the hosting needs to know of one kind of entity, declared once in the
    kind's own module (`KIND = EntityKind(...)`) and listed in opay/actors/registry.py,
    which derives every dispatch table from these: the role of Akka's message extractor
    and of Orleans' grain interfaces."""

    ids: EntityIds  # the id prefix and the ids' constructor
    states: tuple[type, ...]  # what its snapshot may hold (tagged Structs)
    handlers: dict[type, Handler]  # command type -> handler (the kind's commands)
    # Bumped when a state's stored shape changes; `upgrades[n]` reads schema n as n + 1.
    schema: int = 1
    upgrades: dict[int, Upgrade] = {}
    journal_keys: dict[type, JournalKeys] = {}  # command type -> the journal keys it reads
    timer: Callable[[str], Command] | None = None  # the command its due time fires
    answered: Handler | None = None  # how it takes the answers to what it told (Answered)
    answer_keys: JournalKeys | None = None  # the journal keys an answer reads

    @property
    def prefix(self) -> str:
        return self.ids.prefix


class EntityHost:
    def __init__(
        self,
        store: SnapshotStore,
        handlers: dict[type, Handler],
        max_active: int,
        emit_events: bool = False,
        journal_keys: dict[type, JournalKeys] | None = None,
        codec: SnapshotCodec | None = None,
        on_commit: Callable[[object | None, object], None] | None = None,
    ) -> None:
        assert max_active > 0
        if codec is None:
            # The registry's, of every kind. Imported here: the kinds' modules import this one.
            from opay.actors.registry import codec
        self._codec = codec
        self._shard = store.shard
        self._journal_keys = journal_keys or {}
        self.journal_reads = 0  # journal entries read on demand (no command named them), since start
        self.quarantined = 0  # snapshots that could not be decoded, since start
        self._emit_events = emit_events
        self._store = store
        self._handlers = handlers
        self._max_active = max_active
        self._active: OrderedDict[str, Active] = OrderedDict()
        self._shared = Shared()
        # Told (state before, state after) of every write that landed: the shard's metrics.
        self._on_commit = on_commit

    @property
    def active_count(self) -> int:
        return len(self._active)

    def held_journal(self, entity_id: str) -> int | None:
        """How many journal entries (or keys, of a journal held whole) an active entity holds
        in memory between batches (None: not active)."""
        active = self._active.get(entity_id)
        return None if active is None else len(active.journal) + len(active.present)

    def handle(self, commands: list[Command], now_ms: int) -> BatchResult:
        replies: list[Reply | None] = [None] * len(commands)
        mailboxes: dict[str, list[int]] = {}
        for position, command in enumerate(commands):
            mailboxes.setdefault(command.entity_id, []).append(position)

        # Per entity, the journal keys whose entries a command has read: this batch, or an
        # earlier one (what a resident entity holds as entries).
        read: dict[str, set[str]] = {}
        present = self._activate(commands, replies, mailboxes, read)
        writes: list[EntityWrite] = []
        staged: list[tuple[str, Active, object, dict[str, bytes]]] = []
        tells: dict[str, list[Tell]] = {}
        for entity_id, positions in mailboxes.items():
            if entity_id not in present:
                continue
            try:
                planned = self._apply(entity_id, present[entity_id], [commands[p] for p in positions], now_ms, read.setdefault(entity_id, set()))
            except redis.RedisError:
                # A journal entry read on demand failed: nothing was decided.
                self._active.pop(entity_id, None)
                for position in positions:
                    replies[position] = UNAVAILABLE
                continue
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
        for entity_id in mailboxes:
            if entity_id in self._active:
                self._active[entity_id].idle(read.get(entity_id, ()))  # entries read during the batch count too
        # A Tell leaves only if what its entity decided is durable; entities that told
        # without writing (e.g. re-asking after a restart) tell from committed state.
        sent = [tell for entity_id, asked in tells.items() if entity_id not in committed or committed[entity_id] for tell in asked]
        return BatchResult(replies, sent)  # type: ignore[arg-type]

    def _apply(
        self, entity_id: str, active: Active, mailbox: list[Command], now_ms: int, read: set[str]
    ) -> tuple[list[Reply], object, EntityWrite | None, dict[str, bytes], list[Tell]]:
        """One entity's mailbox for this batch, one command at a time: the replies, the new
        state and its write (None if nothing changed), new journal entries, what it tells;
        the journal keys its commands read are added to `read`."""
        state: object = active.state
        pending: dict[str, bytes] = {}

        def fetch(key: str) -> bytes | None:
            self.journal_reads += 1
            return self._store.journal_entry(entity_id, key)

        events = self._codec.encode_state if self._emit_events else None
        effects: list[SideEffect] = []
        asked: list[Tell] = []
        replies: list[Reply] = []
        for command in mailbox:
            step = Step(entity_id, now_ms, state, active, pending, events, self._shard, fetch, read)
            self._handlers[type(command)](command, state, step)
            if step.reply is None:  # a fault in the kind's handler: fails this entity's batch only
                raise TypeError(f"{type(command).__name__} left no reply")
            state = step.state
            effects += step.effects
            asked += step.tells
            replies.append(step.reply)
        if state is None or (not effects and state is active.state):
            return replies, state, None, pending, asked
        snapshot = self._codec.encode_state(state)
        if len(snapshot) > SNAPSHOT_MAX_BYTES:
            raise Oversized(f"snapshot of {entity_id} is {len(snapshot)} bytes")
        return replies, state, EntityWrite(entity_id, active.version, snapshot, effects), pending, asked

    def _activate(
        self, commands: list[Command], replies: list[Reply | None], mailboxes: dict[str, list[int]], read: dict[str, set[str]]
    ) -> dict[str, Active]:
        """Each addressed entity, active or loaded now, with the journal entries its commands
        name: one pipelined round trip for the whole batch (none if nothing is missing). An
        active entity's held entries are marked read in `read`, before the batch adds any."""
        present: dict[str, Active] = {}
        missing: list[str] = []
        wanted: dict[str, list[str]] = {}
        for entity_id, positions in mailboxes.items():
            active = self._active.get(entity_id)
            if active is not None:
                self._active.move_to_end(entity_id)
                if active.journal is NO_JOURNAL:
                    active.journal = {}
                read[entity_id] = set(active.journal)
                present[entity_id] = active
            else:
                missing.append(entity_id)
            if active is not None and active.whole and not active.present:
                continue
            named = {key: None for p in positions for key in self._named(commands[p])}
            names = [key for key in named if active is None or active.may_hold(key)]
            if names:
                wanted[entity_id] = names
        try:
            loaded, entries = self._store.load(missing, wanted)
        except redis.RedisError:
            for entity_id in set(missing) | set(wanted):
                self._active.pop(entity_id, None)
                present.pop(entity_id, None)
                for position in mailboxes[entity_id]:
                    replies[position] = UNAVAILABLE
            return present
        for entity_id, found in entries.items():
            present[entity_id].journal.update(found)
        for entity_id, found in loaded.items():
            if found.snapshot is None:
                present[entity_id] = Active(0, None, dict(found.journal), found.whole)
                continue
            try:
                state = self._codec.decode_state(found.snapshot)
            except Exception as error:  # any decoder fault, not only msgspec's
                self._quarantine(entity_id, error, replies, mailboxes[entity_id])
                continue
            active = Active(found.version, state, dict(found.journal), found.whole)
            present[entity_id] = active
            self._remember(entity_id, active)
        return present

    def _named(self, command: Command) -> tuple[str, ...]:
        keys_of = self._journal_keys.get(type(command))
        if keys_of is None:
            return ()
        try:
            return keys_of(command)
        except Exception:
            # Only a hint: the handler meets the same fault inside its entity's guard.
            log.exception("journal keys of a %s", type(command).__name__)
            return ()

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
        staged: list[tuple[str, Active, object, dict[str, bytes]]],
        replies: list[Reply | None],
        mailboxes: dict[str, list[int]],
    ) -> dict[str, bool]:
        """Whether each written entity's write landed."""
        outcomes = self._store.write_many(writes)
        committed: dict[str, bool] = {}
        for n, (entity_id, active, state, pending) in enumerate(staged):
            committed[entity_id] = outcomes[n] == LANDED
            if committed[entity_id]:
                if self._on_commit is not None:
                    self._on_commit(active.state, state)
                active.journal.update(pending)
                self._remember(entity_id, Active(writes[n].expected_version + 1, state, active.journal, active.whole, active.present))  # type: ignore[arg-type]
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
        assert active.state is not None
        self._shared.share(active.state)
        active.held()
        self._active[entity_id] = active
        self._active.move_to_end(entity_id)
        while len(self._active) > self._max_active:
            # Passivation: the least recently used entity leaves memory; Redis holds it.
            self._active.popitem(last=False)
