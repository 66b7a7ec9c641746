"""An outgoing payment's lifecycle: funding -> sending -> completed, or failed with a reason.

201 on create means the payment is durably stored in `funding`: no money has moved.
The ASE funds it (or an auto-fund policy does); settlement then delivers exactly the
quoted receive amount, once, and the payment completes or fails with its reason.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from opay.domain.amounts import Asset
from opay.domain.errors import Conflict

Phase = Literal["funding", "sending", "completed", "failed"]


class OutgoingPayment(msgspec.Struct, frozen=True, kw_only=True, tag="op"):
    id: str
    wallet_address: str
    client: str | None
    grant_id: str
    quote_id: str | None
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

    @property
    def failed(self) -> bool:
        return self.phase == "failed"

    @property
    def settled(self) -> bool:
        return self.phase in ("completed", "failed")


class Abandoned(msgspec.Struct, frozen=True, kw_only=True, tag="gone"):
    """The tombstone of a payment that was never opened: its grant asked about it after
    reserving its share, found nothing, and gave the share back. It stays, so a create
    arriving later still (a stalled front end) cannot open a payment whose share is no
    longer counted against the grant. It is a few bytes, written only after a crash or
    an outage cut a create short, and no index lists it."""

    id: str
    grant_id: str
    abandoned_at_ms: int


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


def undeliverable(payment: OutgoingPayment, reason: str) -> OutgoingPayment:
    if payment.phase != "sending":
        return payment
    return msgspec.structs.replace(payment, phase="failed", failure=reason)
