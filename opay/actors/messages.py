"""Commands to entity actors and their replies. A batch crosses the Ray boundary as msgpack.

An entity may ask another entity something (a settlement credit, a spend release) with
a Tell: it leaves with the batch's replies once the asking entity's state is committed,
and the router delivers it, sending the answer back as `Answered`. A Tell can be lost
with a crashed front end; every entity that tells keeps the pending action in its
committed state and a due time, so its timer asks again (answers are idempotent).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from opay.domain.amounts import Asset
from opay.domain.grant_spend import Limits
from opay.domain.incoming_payment import CreditOutcome
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.quote import Quote
from opay.persistence.codec import EntityState


class OpenIncomingPayment(msgspec.Struct, frozen=True, tag="ip.open"):
    entity_id: str
    payment: EntityState


# Who credits: the operator API, an outgoing payment's settlement, or the ILP receiver.
# Each has a journal namespace of its own (incoming_payments.journal_key), so no key one
# of them is given can name another's entry.
CreditSource = Literal["operator", "settlement", "ilp"]


class CreditIncomingPayment(msgspec.Struct, frozen=True, tag="ip.credit"):
    """A credit, deduplicated by its idempotency key (kept for good), or, for ILP packets,
    by the Prepare's executionCondition (kept until the Prepare expires; never credited at
    or after `expires_at_ms`). `source` is set by the code path that sends it, never taken
    from the input."""

    entity_id: str
    amount: int
    source: CreditSource
    idempotency_key: str = ""
    condition: bytes = b""  # ILP: the Prepare's executionCondition (32 bytes)
    expires_at_ms: int = 0  # ILP: the Prepare's expiresAt


class CompleteIncomingPayment(msgspec.Struct, frozen=True, tag="ip.complete"):
    entity_id: str
    # The caller's scope: None means any. Out of scope answers not found, never forbidden,
    # so one client cannot learn of another's resources.
    wallet_address: str | None
    client: str | None


class ExpireIncomingPayment(msgspec.Struct, frozen=True, tag="ip.expire"):
    entity_id: str


class OpenQuote(msgspec.Struct, frozen=True, tag="quote.open"):
    entity_id: str
    quote: Quote


class BindQuote(msgspec.Struct, frozen=True, tag="quote.bind"):
    """Make the quote back one outgoing payment (single use, before expiry)."""

    entity_id: str
    payment_id: str
    wallet_address: str


class UnbindQuote(msgspec.Struct, frozen=True, tag="quote.unbind"):
    entity_id: str
    payment_id: str


class ReserveSpend(msgspec.Struct, frozen=True, tag="grant.reserve"):
    entity_id: str
    payment_id: str
    limits: Limits
    debit: int
    debit_asset: Asset
    receive: int
    receive_asset: Asset
    receiver: str


class ReleaseSpend(msgspec.Struct, frozen=True, tag="grant.release"):
    entity_id: str
    payment_id: str


class ReadSpend(msgspec.Struct, frozen=True, tag="grant.read"):
    entity_id: str
    limits: Limits


class ConfirmSpend(msgspec.Struct, frozen=True, tag="grant.confirm"):
    """From the payment entity once opened: its reservation is no longer tentative."""

    entity_id: str
    payment_id: str


class ResumeGrantSpend(msgspec.Struct, frozen=True, tag="grant.resume"):
    """The timer's nudge: ask about reservations whose payment has not confirmed them."""

    entity_id: str


class CheckReservation(msgspec.Struct, frozen=True, tag="op.check"):
    """From a grant to a payment id it reserved for: were you opened under this grant?
    Asking settles it: an id with no payment becomes a tombstone that refuses any open."""

    entity_id: str
    grant_id: str


class OpenOutgoingPayment(msgspec.Struct, frozen=True, tag="op.open"):
    """Open the payment, or answer the one this same request opened before (a retry)."""

    entity_id: str
    payment: OutgoingPayment
    limits: Limits
    fund_at_once: bool
    # A payment from a quote opens only before the quote's expiresAt (by this entity's clock).
    quote_expires_at_ms: int | None = None
    # False: no share of the grant is reserved for this attempt (the quote expired, or the
    # reservation was given back), so only an existing payment is answered; none is opened.
    reserved: bool = True


class FundOutgoingPayment(msgspec.Struct, frozen=True, tag="op.fund"):
    entity_id: str


class CancelOutgoingPayment(msgspec.Struct, frozen=True, tag="op.cancel"):
    entity_id: str
    reason: str


class ResumeOutgoingPayment(msgspec.Struct, frozen=True, tag="op.resume"):
    """The timer's nudge: redo whatever the payment still waits on."""

    entity_id: str


class State(msgspec.Struct, frozen=True, tag="state"):
    state: EntityState


class Credited(msgspec.Struct, frozen=True, tag="credited"):
    outcome: CreditOutcome
    asset: Asset
    # True when the idempotency key was already applied: the outcome is the first one.
    # The operator API answers the same either way; an ILP receiver must not fulfil twice.
    replayed: bool = False
    # The payment's totals now (they may have moved on since the first outcome).
    received_now: int = 0
    incoming_amount: int | None = None


class Spent(msgspec.Struct, frozen=True, tag="spent"):
    """A grant's spending in the current repetition (including the payment just reserved)."""

    debit: int
    receive: int


class Checked(msgspec.Struct, frozen=True, tag="checked"):
    """A payment entity's answer to CheckReservation (named, as Answered does not say who asked about what)."""

    payment_id: str
    exists: bool  # opened under the asking grant; False is final (a tombstone or another grant's payment)


class Nothing(msgspec.Struct, frozen=True, tag="nothing"):
    pass


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    kind: str  # invalid | conflict | not_found | forbidden | unavailable
    code: str
    description: str
    details: dict = {}


Reply = State | Credited | Spent | Checked | Nothing | Failed


class Answered(msgspec.Struct, frozen=True, tag="answered"):
    """The answer to a Tell, delivered to the entity that asked."""

    entity_id: str
    question: str  # the tag of the command asked
    answer: Reply


Command = (
    OpenIncomingPayment
    | CreditIncomingPayment
    | CompleteIncomingPayment
    | ExpireIncomingPayment
    | OpenQuote
    | BindQuote
    | UnbindQuote
    | ReserveSpend
    | ReleaseSpend
    | ReadSpend
    | ConfirmSpend
    | ResumeGrantSpend
    | CheckReservation
    | OpenOutgoingPayment
    | FundOutgoingPayment
    | CancelOutgoingPayment
    | ResumeOutgoingPayment
    | Answered
)


class Tell(msgspec.Struct, frozen=True):
    command: Command
    reply_to: str | None = None


class BatchResult(msgspec.Struct, frozen=True):
    replies: list[Reply]
    tells: list[Tell] = []


UNAVAILABLE = Failed("unavailable", "unavailable", "storage is unavailable; retry shortly")
CONFLICT_RETRY = Failed("unavailable", "concurrent_activation", "the resource moved between hosts; retry shortly")

_encoder = msgspec.msgpack.Encoder()
_commands = msgspec.msgpack.Decoder(list[Command])
_result = msgspec.msgpack.Decoder(BatchResult)


def tag_of(command: Command) -> str:
    return type(command).__struct_config__.tag  # type: ignore[return-value]


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def decode_commands(data: bytes) -> list[Command]:
    return _commands.decode(data)


def decode_result(data: bytes) -> BatchResult:
    return _result.decode(data)
