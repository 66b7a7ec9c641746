"""A shard: one Ray actor hosting many entity actors. Ray places, restarts and scales shards."""

from __future__ import annotations

import os


from opay.clock import now_ms
from opay.actors import grant_spends, incoming_payments, outgoing_payments, quotes
from opay.actors.entity import EntityHost, Step
from opay.actors.messages import Answered, decode_commands, encode
from opay.persistence import clients
from opay.persistence.snapshots import SnapshotStore

# An answer goes to whichever kind of entity asked; every other command names its kind.
ANSWERED_BY_KIND = {"op": outgoing_payments.answered, "grant": grant_spends.answered}


def answered(command: Answered, state: object, step: Step) -> None:
    ANSWERED_BY_KIND[command.entity_id.split(":", 1)[0]](command, state, step)


def answered_keys(command: Answered) -> tuple[str, ...]:
    return grant_spends.answer_keys(command) if command.entity_id.startswith("grant:") else ()


# The journal keys each command will read, prefetched with its batch's loads (see
# EntityHost). A key no entry names is read on demand, if its journal is too large to be
# held whole.
JOURNAL_KEYS = {**incoming_payments.JOURNAL_KEYS, **grant_spends.JOURNAL_KEYS, Answered: answered_keys}

HANDLERS = {
    **incoming_payments.HANDLERS,
    **quotes.HANDLERS,
    **grant_spends.HANDLERS,
    **outgoing_payments.HANDLERS,
    Answered: answered,
}



class Shard:
    """A synchronous actor on purpose: Ray runs its calls one at a time, which is the
    per-entity serial order the rules rely on, at half the CPU cost of an async actor."""

    def __init__(self, index: int, redis_url: str, max_active: int, redis_timeout_seconds: float, emit_events: bool) -> None:
        self.index = index
        self._redis_url = redis_url
        client = clients.blocking(redis_url, redis_timeout_seconds)
        self._host = EntityHost(SnapshotStore(client), HANDLERS, max_active, emit_events, shard=index, journal_keys=JOURNAL_KEYS)

    def handle(self, batch: bytes) -> bytes:
        return encode(self._host.handle(decode_commands(batch), now_ms()))

    def stats(self) -> dict[str, int | str]:
        host = self._host
        return {
            "index": self.index,
            "active": host.active_count,
            "pid": os.getpid(),
            "redis_url": self._redis_url,
            "quarantined": host.quarantined,
            "journal_reads": host.journal_reads,
        }
