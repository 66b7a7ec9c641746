"""The one encoding of entity snapshots and journal entries: msgpack of tagged Structs."""

from __future__ import annotations

import msgspec

from opay.domain.incoming_payment import CreditOutcome, IncomingPayment

EntityState = IncomingPayment

_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(EntityState)
_outcome_decoder = msgspec.msgpack.Decoder(CreditOutcome)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_state(data: bytes) -> EntityState:
    return _state_decoder.decode(data)


def decode_outcome(data: bytes) -> CreditOutcome:
    return _outcome_decoder.decode(data)
