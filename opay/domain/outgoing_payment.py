"""An outgoing payment's lifecycle: funding -> sending -> completed, or failed with a reason.

201 on create means the payment is durably stored in `funding`: no money has moved.
The ASE funds it (or an auto-fund policy does); settlement then delivers exactly the
quoted receive amount, once, and the payment completes or fails with its reason.

A create may be retried after a lost reply. The payment's id is derived from what the
client names it by (the quote's id, or the grant and its `Idempotency-Key`), so a retry
lands on the payment its first attempt made; `retried` decides what the retry gets: the
payment itself, or why not.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from opay.domain.amounts import Asset
from opay.domain.errors import Conflict, Unprocessable

Phase = Literal["funding", "sending", "completed", "failed"]


class RemoteDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """How a payment to a receiver on another server is delivered: one STREAM connection
    over a peer's link. `stream` is the sender's state (opay.ilp.sender.SenderState,
    msgpack: the domain knows no ILP), `wire` the exact bytes of the Prepares it holds in
    flight, so a resumed payment resends them unchanged (the receiver answers an exact
    resend with the same Fulfill and credits nothing) until they expire. `peer` is the
    peer the quote routed to ("" : routed by the destination when sending)."""

    peer: str = ""
    stream: bytes
    wire: tuple[bytes, ...] = ()
    # False after a restart or a lost reply: the receiver's room (incomingAmount -
    # receivedAmount) is read again over Open Payments before anything new is sent.
    cap_fresh: bool = True
    # The link's unit is the debit asset's (the sender's sent counts as sentAmount as is);
    # False: sentAmount is the principal's share the link units sent stand for (rounded down).
    debit_units: bool = True
    # Money packets abandoned unanswered past their expiry (a crash outlived them): the
    # receiver may have credited them. Never counted as sent or delivered, but reserved as
    # if they were: the connection spends and delivers that much less (link units, and
    # receive units), so no crash makes it pay past debitAmount or deliver past receiveAmount.
    unsure_source: int = 0
    unsure_dest: int = 0


class OutgoingPayment(msgspec.Struct, frozen=True, kw_only=True, tag="op"):
    id: str
    wallet_address: str
    client: str | None
    grant_id: str
    # Made from a quote: then the payment has the quote's id (see `quote_id`).
    by_quote: bool
    receiver: str
    debit_asset: Asset
    receive_asset: Asset
    debit: int
    receive: int
    fee: int
    metadata: bytes | None = None  # the client's JSON text, as IncomingPayment.metadata
    created_at_ms: int
    phase: Phase = "funding"
    sent: int = 0
    failure: str | None = None
    # A failed payment gives its share of the grant back; until that is acknowledged
    # the payment keeps asking (its timer re-drives it).
    grant_released: bool = False
    # The grant's spending as the create answered it (grantSpentDebitAmount and
    # grantSpentReceiveAmount of the 201), so a retried create gets that answer again.
    # None in snapshots written before it was kept.
    grant_spent_debit: int | None = None
    grant_spent_receive: int | None = None
    # A receiver on another server (None: a local one, settled by a credit).
    remote: RemoteDelivery | None = None
    delivered: int = 0  # remote: what the receiver has (Fulfills only), in receive units

    @property
    def quote_id(self) -> str | None:
        """The quote it was made from (whose id it took), if any."""
        return self.id if self.by_quote else None

    @property
    def failed(self) -> bool:
        return self.phase == "failed"

    @property
    def settled(self) -> bool:
        return self.phase in ("completed", "failed")


def upgrade_from_schema_1(fields: dict) -> dict:
    """A snapshot's fields when payments kept `quote_id` (their own id or None)."""
    if fields.get("type") != "op":
        return fields  # a tombstone: unchanged
    fields = dict(fields)
    fields["by_quote"] = fields.pop("quote_id", None) is not None
    return fields


class Abandoned(msgspec.Struct, frozen=True, kw_only=True, tag="gone"):
    """The tombstone of a payment that was never opened: its grant asked about it after
    reserving its share, found nothing, and gave the share back. It stays, so a create
    arriving later still (a stalled front end) cannot open a payment whose share is no
    longer counted against the grant. It is a few bytes, written only after a crash or
    an outage cut a create short, and no index lists it."""

    id: str
    grant_id: str
    abandoned_at_ms: int


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What a create asks for, as far as a retry must ask the same to get the same payment:
    who asks (wallet address, client, grant) and what it asks (the quote, or the receiver
    and debit amount, and the metadata exactly as sent). The receive amount and fee of a
    quote-less payment are priced by the server, so they are not part of the request."""

    wallet_address: str
    client: str | None
    grant_id: str
    quote_id: str | None
    receiver: str
    debit: int
    debit_asset: Asset
    metadata: bytes | None
    # The quote's expiresAt: an attempt at or after it never opens a payment, and one that
    # finds no payment opened is told the quote expired.
    quote_expires_at_ms: int | None = None


def attempt_of(payment: OutgoingPayment, quote_expires_at_ms: int | None = None) -> Attempt:
    return Attempt(
        wallet_address=payment.wallet_address,
        client=payment.client,
        grant_id=payment.grant_id,
        quote_id=payment.quote_id,
        receiver=payment.receiver,
        debit=payment.debit,
        debit_asset=payment.debit_asset,
        metadata=payment.metadata,
        quote_expires_at_ms=quote_expires_at_ms,
    )


def expired() -> Conflict:
    """The answer to an attempt at or after the quote's expiresAt that finds no payment."""
    return Conflict("quote_expired", "the quote has expired and no payment was made from it")


def abandoned(by_quote: bool) -> Conflict:
    """The answer to a retry whose first attempt was cut off and given up (a tombstone)."""
    again = "with a new quote" if by_quote else "with a new Idempotency-Key"
    return Conflict(
        "payment_abandoned",
        "this payment's creation was cut off and given up: it was never made and its share "
        f"of the grant was given back; create the payment again {again}",
    )


def retried(existing: OutgoingPayment | Abandoned, attempt: Attempt, now_ms: int) -> OutgoingPayment:
    """What a create gets when its payment id is taken already: the payment, if it is the
    one this same request made (a retry: whatever happened to it since, and even after
    the quote's expiresAt, as it was created in time); otherwise why not."""
    by_quote = attempt.quote_id is not None
    if isinstance(existing, Abandoned):
        if attempt.quote_expires_at_ms is not None and now_ms >= attempt.quote_expires_at_ms:
            raise expired()
        raise abandoned(by_quote)
    if (existing.grant_id, existing.client) != (attempt.grant_id, attempt.client):
        # Another grant's payment (a quote is single use, whoever uses it first).
        if by_quote:
            raise Conflict("quote_used", "the quote already backs an outgoing payment")
        raise Conflict("exists", "an outgoing payment with this id exists")
    if _asked(existing) != _asked_by(attempt):
        if by_quote:
            raise Conflict("quote_used", "the quote already backs an outgoing payment made by a different request")
        raise Unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request (walletAddress, incomingPayment, debitAmount or metadata)",
        )
    return existing


def _asked(payment: OutgoingPayment) -> tuple:
    return (payment.wallet_address, payment.quote_id, payment.receiver, payment.debit, payment.debit_asset, payment.metadata)


def _asked_by(attempt: Attempt) -> tuple:
    return (attempt.wallet_address, attempt.quote_id, attempt.receiver, attempt.debit, attempt.debit_asset, attempt.metadata)


def as_created(payment: OutgoingPayment) -> OutgoingPayment:
    """The payment as its create answered it (nothing sent, not failed): what a retried
    create answers again, whatever happened since (GET tells that)."""
    return msgspec.structs.replace(payment, phase="funding", sent=0, failure=None, grant_released=False)


def fund(payment: OutgoingPayment) -> OutgoingPayment:
    """Funding twice is harmless; a settled payment cannot be funded."""
    if payment.phase == "funding":
        return msgspec.structs.replace(payment, phase="sending")
    if payment.phase == "sending":
        return payment
    raise Conflict("already_settled", f"the outgoing payment is {payment.phase}")


def cancel(payment: OutgoingPayment, reason: str) -> OutgoingPayment:
    """The ASE declines to fund it: only before any money is sent."""
    if payment.phase != "funding":
        raise Conflict("not_cancellable", f"the outgoing payment is {payment.phase}")
    return msgspec.structs.replace(payment, phase="failed", failure=reason)


def delivered(payment: OutgoingPayment) -> OutgoingPayment:
    """The receiver got exactly `receive`; the principal (debit less fee) was sent."""
    if payment.phase != "sending":
        return payment
    return msgspec.structs.replace(payment, phase="completed", sent=payment.debit - payment.fee)


def grant_share_released(payment: OutgoingPayment) -> OutgoingPayment:
    assert payment.phase == "failed"
    return msgspec.structs.replace(payment, grant_released=True)


def remote_progress(payment: OutgoingPayment, remote: RemoteDelivery, sent: int, delivered: int) -> OutgoingPayment:
    """A remote payment's connection moved on: `sent` (source units, Fulfills only) grows."""
    assert 0 <= sent <= payment.debit - payment.fee and delivered >= 0
    return msgspec.structs.replace(payment, remote=remote, sent=sent, delivered=delivered)


def remote_completed(payment: OutgoingPayment) -> OutgoingPayment:
    if payment.phase != "sending":
        return payment
    return msgspec.structs.replace(payment, phase="completed")


def undeliverable(payment: OutgoingPayment, reason: str) -> OutgoingPayment:
    if payment.phase != "sending":
        return payment
    return msgspec.structs.replace(payment, phase="failed", failure=reason)
