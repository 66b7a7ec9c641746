"""The one encoding of entity snapshots and journal entries: msgpack of tagged Structs.

A snapshot is an envelope `[schema, state]`: the state's kind's schema number, then the
state. Which states exist and their schemas are the entity registry's to say
(opay/actors/registry.py builds the SnapshotCodec); persistence only applies them, so it
imports no actor. A snapshot written before envelopes existed (a bare state) is read as
schema 1. An older schema is upgraded on read by the kind's upgrade steps (plain-data
functions from one schema's fields to the next); a schema this code does not know, or a
state of no known kind, is unreadable (the entity host quarantines it).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, Union

import msgspec

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()

# A snapshot's fields as plain data (the state's dict) -> the next schema's.
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
# Snapshots before envelopes: the state alone.
UNVERSIONED_SCHEMA = 1


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.msgpack.decode(data, type=kind)


class UnknownSchema(ValueError):
    """A snapshot of a schema (or a kind) this code cannot read."""


class StateSchema(msgspec.Struct, frozen=True):
    """One kind's states, its current schema number and how to reach it from older ones
    (`upgrades[n]` turns schema n into n + 1)."""

    types: tuple[type, ...]
    schema: int
    upgrades: dict[int, Upgrade] = {}


class SnapshotCodec:
    """Snapshots of the states the registry declares. Also the plain `encode`/`decode` of
    journal entries, so one object is the whole encoding."""

    encode = staticmethod(encode)
    decode = staticmethod(decode)

    def __init__(self, schemas: list[StateSchema]) -> None:
        self._schema: dict[type, StateSchema] = {t: s for s in schemas for t in s.types}
        self._by_tag: dict[str, StateSchema] = {t.__struct_config__.tag: s for s in schemas for t in s.types}
        assert len(self._by_tag) == len(self._schema), "two states share a tag"
        for s in schemas:
            assert all(1 <= n < s.schema for n in s.upgrades), "an upgrade from a schema not before the current one"
        # The union of every kind's states (a snapshot holds any of them).
        self.State: Any = Union[tuple(self._schema)]  # noqa: N815 - a type
        self._state = msgspec.msgpack.Decoder(self.State)
        self._current = msgspec.msgpack.Decoder(tuple[int, self.State])

    def encode_state(self, state: msgspec.Struct) -> bytes:
        return _encoder.encode((self._schema[type(state)].schema, state))

    def decode_state(self, data: bytes) -> Any:
        """The state a snapshot holds, upgraded to its kind's current schema."""
        bare = data[:1] and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF))  # a msgpack map
        try:
            if bare:
                state, schema = self._state.decode(data), UNVERSIONED_SCHEMA
            else:
                schema, state = self._current.decode(data)
        except msgspec.ValidationError:
            state = None  # maybe an older schema's shape: read it as plain data below
        else:
            if schema == self._schema[type(state)].schema:
                return state
        return self._upgraded(data, bool(bare))

    def _upgraded(self, data: bytes, bare: bool) -> Any:
        plain = msgspec.msgpack.decode(data)
        if bare:
            schema, fields = UNVERSIONED_SCHEMA, plain
        elif isinstance(plain, list) and len(plain) == 2:
            schema, fields = plain
        else:
            raise UnknownSchema("not a snapshot")
        kind = self._by_tag.get(fields.get("type")) if isinstance(fields, dict) else None
        if kind is None:
            raise UnknownSchema("a snapshot of no known kind")
        if not isinstance(schema, int) or schema > kind.schema or any(n not in kind.upgrades for n in range(schema, kind.schema)):
            raise UnknownSchema(f"schema {schema!r} of {fields['type']!r} cannot be read (current: {kind.schema})")
        for n in range(schema, kind.schema):
            fields = kind.upgrades[n](fields)
        return msgspec.convert(fields, self.State)
