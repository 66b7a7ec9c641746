"""The one encoding of entity snapshots and journal entries: msgpack of tagged Structs."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from opay.domain.grant_spend import GrantSpend
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import Abandoned, OutgoingPayment
from opay.domain.quote import Quote

# Abandoned: the tombstone an outgoing-payment id keeps when its create never completed.
EntityState = IncomingPayment | Quote | OutgoingPayment | GrantSpend | Abandoned

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(EntityState)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_state(data: bytes) -> EntityState:
    return _state_decoder.decode(data)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.msgpack.decode(data, type=kind)
