"""Commands to entity actors and their replies. A batch crosses the Ray boundary as msgpack.

An entity may ask another entity something (a settlement credit, a spend release) with
a Tell: it leaves with the batch's replies once the asking entity's state is committed,
and the router delivers it, sending the answer back as `Answered`. A Tell can be lost
with a crashed front end; every entity that tells keeps the pending action in its
committed state and a due time, so its timer asks again (answers are idempotent).

This module declares the protocol: every command derives from `Command`, and the kind
that handles it says so in its own module (its `KIND`). What is open here (a `State`'s
state, the command a `Tell` carries) is closed by opay/actors/registry.py, which knows
every kind: it builds the unions and the decoders of a batch and of its result.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

import msgspec

from opay.domain.amounts import Asset
from opay.domain.grant_spend import Limits
from opay.domain.incoming_payment import CreditOutcome, IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.quote import Quote

S = TypeVar("S")  # an entity state (the registry's union of them)
C = TypeVar("C")  # a command (the registry's union of them)
R = TypeVar("R")  # a reply (the registry's Reply, its State closed)


class Command(msgspec.Struct, frozen=True):
    """To one entity, named by its id (opay/actors/ids.py)."""

    entity_id: str


class OpenIncomingPayment(Command, tag="ip.open"):
    payment: IncomingPayment


# Who credits: the operator API, an outgoing payment's settlement, or the ILP receiver.
# Each has a journal namespace of its own (incoming_payments.journal_key), so no key one
# of them is given can name another's entry.
CreditSource = Literal["operator", "settlement", "ilp"]


class CreditIncomingPayment(Command, tag="ip.credit"):
    """A credit, deduplicated by its idempotency key (kept for good), or, for ILP packets,
    by the Prepare's executionCondition (kept until the Prepare expires; never credited at
    or after `expires_at_ms`). `source` is set by the code path that sends it, never taken
    from the input."""

    amount: int
    source: CreditSource
    idempotency_key: str = ""
    condition: bytes = b""  # ILP: the Prepare's executionCondition (32 bytes)
    expires_at_ms: int = 0  # ILP: the Prepare's expiresAt
    # ILP: the peer whose link it arrived on ("" none: an OPAY_ILP_INCOMING_TOKENS token);
    # an accepted packet adds its amount to that peer's received total in the same write.
    peer: str = ""


class CompleteIncomingPayment(Command, tag="ip.complete"):
    # The caller's scope: None means any. Out of scope answers not found, never forbidden,
    # so one client cannot learn of another's resources.
    wallet_address: str | None
    client: str | None


class ExpireIncomingPayment(Command, tag="ip.expire"):
    pass


class OpenQuote(Command, tag="quote.open"):
    quote: Quote


class BindQuote(Command, tag="quote.bind"):
    """Make the quote back one outgoing payment (single use, before expiry)."""

    payment_id: str
    wallet_address: str


class UnbindQuote(Command, tag="quote.unbind"):
    payment_id: str


class ReserveSpend(Command, tag="grant.reserve"):
    payment_id: str
    limits: Limits
    debit: int
    debit_asset: Asset
    receive: int
    receive_asset: Asset
    receiver: str


class ReleaseSpend(Command, tag="grant.release"):
    payment_id: str
    # What the failed payment did spend (a remote one that failed part-way): kept.
    kept_debit: int = 0
    kept_receive: int = 0


class ReadSpend(Command, tag="grant.read"):
    limits: Limits


class ConfirmSpend(Command, tag="grant.confirm"):
    """From the payment entity once opened: its reservation is no longer tentative."""

    payment_id: str


class ResumeGrantSpend(Command, tag="grant.resume"):
    """The timer's nudge: ask about reservations whose payment has not confirmed them."""


class CheckReservation(Command, tag="op.check"):
    """From a grant to a payment id it reserved for: were you opened under this grant?
    Asking settles it: an id with no payment becomes a tombstone that refuses any open."""

    grant_id: str


class OpenOutgoingPayment(Command, tag="op.open"):
    """Open the payment, or answer the one this same request opened before (a retry)."""

    payment: OutgoingPayment
    fund_at_once: bool
    # A payment from a quote opens only before the quote's expiresAt (by this entity's clock).
    quote_expires_at_ms: int | None = None
    # False: no share of the grant is reserved for this attempt (the quote expired, or the
    # reservation was given back), so only an existing payment is answered; none is opened.
    reserved: bool = True


class FundOutgoingPayment(Command, tag="op.fund"):
    pass


class CancelOutgoingPayment(Command, tag="op.cancel"):
    reason: str


class ResumeOutgoingPayment(Command, tag="op.resume"):
    """The timer's nudge: redo whatever the payment still waits on."""


class SendPackets(Command, tag="link.send"):
    """Not for an entity: packets a remote payment (entity_id) puts on a peer's link. The
    front end's router sends them (ILP-over-HTTP, concurrently, each bounded by its expiry)
    and answers with `LinkReplies`. With `refresh`, it first reads the receiver (`receiver`,
    an incoming payment URL on another server) for its room."""

    peer: str  # "" : routed by the Prepares' destination
    prepares: list[bytes]
    receiver: str = ""
    refresh: bool = False


class LinkReplies(msgspec.Struct, frozen=True, tag="link.replies"):
    peer: str  # the peer the packets went to (their totals count there)
    conditions: list[bytes]  # each Prepare's executionCondition, in order
    replies: list[bytes]  # a Fulfill or Reject per Prepare, in order
    remaining: int | None = None  # refresh: incomingAmount - receivedAmount (None: no cap)
    refreshed: bool = False  # refresh asked and the receiver read
    error: str = ""


class State(msgspec.Struct, Generic[S], frozen=True, tag="state"):
    state: S


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


# For annotations; the registry's Reply is this with State's state closed.
Reply = State | Credited | Spent | Checked | Nothing | LinkReplies | Failed


class Answered(Command, Generic[R], tag="answered"):
    """The answer to a Tell, delivered to the entity that asked."""

    question: str  # the tag of the command asked
    answer: R


class Tell(msgspec.Struct, Generic[C], frozen=True):
    command: C
    reply_to: str | None = None


class BatchResult(msgspec.Struct, Generic[C, R], frozen=True):
    replies: list[R]
    tells: list[Tell[C]] = []


UNAVAILABLE = Failed("unavailable", "unavailable", "storage is unavailable; retry shortly")
CONFLICT_RETRY = Failed("unavailable", "concurrent_activation", "the resource moved between hosts; retry shortly")

_encoder = msgspec.msgpack.Encoder()


def tag_of(command: Command) -> str:
    return type(command).__struct_config__.tag  # type: ignore[return-value]


def encode(value: object) -> bytes:
    return _encoder.encode(value)

