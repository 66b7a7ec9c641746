"""The outbox's event: what an entity actor queues atomically with the change it reports."""

from __future__ import annotations

import msgspec

from opay.persistence import codec


class Event(msgspec.Struct, frozen=True):
    """A webhook event in the outbox: the entity's state as it was when it happened."""

    id: str
    type: str
    created_at_ms: int
    state: codec.EntityState
