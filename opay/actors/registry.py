"""The entity registry: every kind of entity, and the dispatch derived from them.

Each kind declares itself once, in its own module, as `KIND = EntityKind(...)` (id
prefix, states, command handlers, journal-key hints, timer command, answer handler:
the role of Akka's message extractor and of Orleans' grain interfaces). Listing it in
KINDS is all the rest needs: the shard's handler and journal-key tables, the timers'
fire table, where an Answered goes, the command union a batch is decoded with, and the
snapshot codec (its state union and schemas) all come from here.

Persistence never imports actors: it gets the codec built here (the entity host and
opay.persistence.queries.Queries are handed `codec`).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import msgspec

from opay.actors import grant_spends, incoming_payments, outgoing_payments, quotes
from opay.actors.entity import EntityKind, Handler, JournalKeys, Step
from opay.actors.ids import prefix_of
from opay.actors.messages import Answered, BatchResult, Checked, Command, Credited, Failed, LinkReplies, Nothing, SendPackets, Spent, State
from opay.outbox.events import Event
from opay.persistence.codec import SnapshotCodec, StateSchema

__all__ = ["EntityKind", "KINDS"]

KINDS: tuple[EntityKind, ...] = (incoming_payments.KIND, quotes.KIND, outgoing_payments.KIND, grant_spends.KIND)

BY_PREFIX: dict[str, EntityKind] = {kind.prefix: kind for kind in KINDS}
assert len(BY_PREFIX) == len(KINDS), "two kinds share an id prefix"


def kind_of(entity_id: str) -> EntityKind | None:
    return BY_PREFIX.get(prefix_of(entity_id))


# Snapshots: the union of every kind's states, each with its kind's schema.
codec = SnapshotCodec([StateSchema(kind.states, kind.schema, kind.upgrades) for kind in KINDS])
EntityState: Any = codec.State
Reply: Any = Union[State[EntityState], Credited, Spent, Checked, Nothing, LinkReplies, Failed]  # type: ignore[valid-type]


def read_event(body: bytes) -> tuple[Event, Any]:
    """An outbox event and the state it holds, upgraded to its kind's current schema."""
    event = codec.decode(body, Event)
    return event, codec.decode_state(event.snapshot)


def answered(command: Answered, state: object, step: Step) -> None:
    """An answer goes to whichever kind of entity asked; every other command names its kind."""
    kind = kind_of(command.entity_id)
    if kind is None or kind.answered is None:
        raise LookupError(f"no kind of {command.entity_id!r} takes answers")
    kind.answered(command, state, step)


def answered_keys(command: Answered) -> tuple[str, ...]:
    kind = kind_of(command.entity_id)
    return () if kind is None or kind.answer_keys is None else kind.answer_keys(command)


def _merged(tables: list[dict[type, Any]]) -> dict[type, Any]:
    merged: dict[type, Any] = {}
    for table in tables:
        assert not merged.keys() & table.keys(), f"two kinds handle {merged.keys() & table.keys()}"
        merged.update(table)
    return merged


HANDLERS: dict[type, Handler] = {**_merged([kind.handlers for kind in KINDS]), Answered: answered}

# The journal keys each command will read, prefetched with its batch's loads (see
# EntityHost). A key no entry names is read on demand, if its journal is too large to be
# held whole.
JOURNAL_KEYS: dict[type, JournalKeys] = {**_merged([kind.journal_keys for kind in KINDS]), Answered: answered_keys}

# By entity-id prefix: the command a due time fires.
FIRE: dict[str, Callable[[str], Command]] = {kind.prefix: kind.timer for kind in KINDS if kind.timer is not None}

# Every command a batch may hold (answers included), closed over the replies.
# SendPackets is no entity's: a Tell of it is run by the front end's router (a peer's link).
AnyCommand: Any = Union[tuple(t for t in HANDLERS if t is not Answered) + (Answered[Reply], SendPackets)]  # type: ignore[valid-type]

_commands = msgspec.msgpack.Decoder(list[AnyCommand])  # type: ignore[valid-type]
_result = msgspec.msgpack.Decoder(BatchResult[AnyCommand, Reply])  # type: ignore[valid-type]


def decode_commands(data: bytes) -> list[Command]:
    return _commands.decode(data)


def decode_result(data: bytes) -> BatchResult:
    return _result.decode(data)
