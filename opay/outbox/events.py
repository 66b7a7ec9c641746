"""The outbox's event: what an entity actor queues atomically with the change it reports."""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True):
    """A webhook event in the outbox: the entity's state as it was when it happened, as its
    snapshot (schema-numbered, opay/persistence/codec.py), so that an event queued under one
    schema is read by a later one as the entity itself is. Read with
    opay.actors.registry.read_event (the registry's codec knows every kind's states)."""

    id: str
    type: str
    created_at_ms: int
    snapshot: bytes
