"""Commands to entity actors and their replies. A batch crosses the Ray boundary as msgpack."""

from __future__ import annotations

import msgspec

from opay.domain.amounts import Asset
from opay.domain.incoming_payment import CreditOutcome, IncomingPayment


class OpenIncomingPayment(msgspec.Struct, frozen=True, tag="ip.open"):
    entity_id: str
    payment: IncomingPayment


class CreditIncomingPayment(msgspec.Struct, frozen=True, tag="ip.credit"):
    entity_id: str
    amount: int
    idempotency_key: str


class CompleteIncomingPayment(msgspec.Struct, frozen=True, tag="ip.complete"):
    entity_id: str
    # The caller's scope: None means any. Out of scope answers not found, never forbidden,
    # so one client cannot learn of another's resources.
    wallet_address: str | None
    client: str | None


class ExpireIncomingPayment(msgspec.Struct, frozen=True, tag="ip.expire"):
    entity_id: str


Command = OpenIncomingPayment | CreditIncomingPayment | CompleteIncomingPayment | ExpireIncomingPayment


class State(msgspec.Struct, frozen=True, tag="state"):
    state: IncomingPayment


class Credited(msgspec.Struct, frozen=True, tag="credited"):
    outcome: CreditOutcome
    asset: Asset


class Nothing(msgspec.Struct, frozen=True, tag="nothing"):
    pass


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    kind: str  # invalid | conflict | not_found | unavailable
    code: str
    description: str
    details: dict = {}


Reply = State | Credited | Nothing | Failed

UNAVAILABLE = Failed("unavailable", "unavailable", "storage is unavailable; retry shortly")
CONFLICT_RETRY = Failed("unavailable", "concurrent_activation", "the resource moved between hosts; retry shortly")

_encoder = msgspec.msgpack.Encoder()
_commands = msgspec.msgpack.Decoder(list[Command])
_replies = msgspec.msgpack.Decoder(list[Reply])


def encode_batch(items: list[Command] | list[Reply]) -> bytes:
    return _encoder.encode(items)


def decode_commands(data: bytes) -> list[Command]:
    return _commands.decode(data)


def decode_replies(data: bytes) -> list[Reply]:
    return _replies.decode(data)
