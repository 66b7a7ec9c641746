"""The outbox's event: what an entity actor queues atomically with the change it reports."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

S = TypeVar("S")


class Event(msgspec.Struct, Generic[S], frozen=True):
    """A webhook event in the outbox: the entity's state as it was when it happened.
    Generic in the state, as the states are the entity registry's to list: decode with
    opay.actors.registry.EntityEvent (this with every kind's states)."""

    id: str
    type: str
    created_at_ms: int
    state: S
