"""The rules of an incoming payment: creation limits, the credit cap, completion, expiry.

A credit is accepted whole or refused whole, and `received <= incoming_amount` holds
after every transition. Expiry is decided against the clock at credit time, so a late
timer can never let money into an expired payment.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from opay.domain.amounts import UINT64_MAX, Asset
from opay.domain.errors import Conflict, Invalid

REFUSED_COMPLETED = "completed"
REFUSED_EXPIRED = "expired"
REFUSED_CAP = "cap_exceeded"
REFUSED_OVERFLOW = "overflow"


# The names an incoming payment is stored and sent under: one letter each. They are kept by
# the million (a snapshot in Redis each), and the long names were a third of a snapshot.
STORED_NAMES = {
    "id": "i",
    "wallet_address": "w",
    "client": "c",
    "asset": "a",
    "incoming_amount": "n",
    "expires_at_ms": "x",
    "created_at_ms": "t",
    "metadata": "m",
    "received": "r",
    "completed": "d",
    "expired": "e",
}


class IncomingPayment(msgspec.Struct, frozen=True, kw_only=True, tag="ip", rename=STORED_NAMES, omit_defaults=True):
    id: str
    wallet_address: str
    client: str | None
    asset: Asset
    incoming_amount: int | None
    expires_at_ms: int
    created_at_ms: int
    # The client's metadata as the JSON text it sent (an object, checked and bounded at the
    # edge): kept and shown byte for byte, never decoded into values.
    metadata: bytes | None = None
    received: int = 0
    completed: bool = False
    expired: bool = False


def upgrade_from_schema_1(fields: dict) -> dict:
    """Schema 1 stored the fields under their Python names."""
    return {STORED_NAMES.get(name, name): value for name, value in fields.items()}


class CreditOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a credit did; kept per idempotency key so a replay answers the same."""

    amount: int
    accepted: bool
    refused_code: str = ""
    received: int
    completed: bool


class ExpiryPolicy(msgspec.Struct, frozen=True):
    default_ms: int
    max_ms: int


def open_payment(
    *,
    payment_id: str,
    wallet_address: str,
    client: str | None,
    asset: Asset,
    incoming_amount: int | None,
    expires_at_ms: int | None,
    metadata: bytes | None,
    now_ms: int,
    expiry: ExpiryPolicy,
) -> IncomingPayment:
    if incoming_amount is not None and incoming_amount <= 0:
        raise Invalid("invalid_amount", "incomingAmount must be greater than zero", {"field": "incomingAmount"})
    latest = now_ms + expiry.max_ms
    if expires_at_ms is None:
        # Every payment gets a deadline: an open-ended payment would hold memory and
        # accept money forever.
        expires_at_ms = now_ms + expiry.default_ms
    elif expires_at_ms <= now_ms:
        raise Invalid("invalid_expires_at", "expiresAt must be in the future", {"field": "expiresAt"})
    elif expires_at_ms > latest:
        raise Invalid(
            "invalid_expires_at",
            f"expiresAt must be at most {expiry.max_ms // 1000} seconds ahead",
            {"field": "expiresAt", "maxSeconds": expiry.max_ms // 1000},
        )
    return IncomingPayment(
        id=payment_id,
        wallet_address=wallet_address,
        client=client,
        asset=asset,
        incoming_amount=incoming_amount,
        expires_at_ms=expires_at_ms,
        created_at_ms=now_ms,
        metadata=metadata,
    )


def is_expired(payment: IncomingPayment, now_ms: int) -> bool:
    return payment.expired or now_ms >= payment.expires_at_ms


Status = Literal["pending", "completed", "expired"]
STATUSES: tuple[Status, ...] = get_args(Status)


def status(payment: IncomingPayment, now_ms: int) -> Status:
    """Completed (paid in full, or completed by its client) wins over expired: nothing more
    can come in either way, and completed says the payee was done with it."""
    if payment.completed:
        return "completed"
    return "expired" if is_expired(payment, now_ms) else "pending"


def credit(payment: IncomingPayment, amount: int, now_ms: int) -> tuple[IncomingPayment, CreditOutcome]:
    if amount <= 0 or amount > UINT64_MAX:
        raise Invalid("invalid_amount", "amount must be a positive uint64", {"field": "amount"})
    refused = _refusal(payment, amount, now_ms)
    if refused:
        return payment, CreditOutcome(
            amount=amount, accepted=False, refused_code=refused, received=payment.received, completed=payment.completed
        )
    received = payment.received + amount
    completed = payment.incoming_amount is not None and received == payment.incoming_amount
    after = msgspec.structs.replace(payment, received=received, completed=completed)
    assert payment.incoming_amount is None or after.received <= payment.incoming_amount
    return after, CreditOutcome(amount=amount, accepted=True, received=received, completed=completed)


def _refusal(payment: IncomingPayment, amount: int, now_ms: int) -> str:
    if payment.completed:
        return REFUSED_COMPLETED
    if is_expired(payment, now_ms):
        return REFUSED_EXPIRED
    if payment.incoming_amount is not None and payment.received + amount > payment.incoming_amount:
        return REFUSED_CAP
    if payment.received + amount > UINT64_MAX:
        return REFUSED_OVERFLOW
    return ""


def complete(payment: IncomingPayment, now_ms: int) -> IncomingPayment:
    """Completing twice is harmless and answers the same; an expired payment cannot complete."""
    if payment.completed:
        return payment
    if is_expired(payment, now_ms):
        raise Conflict(REFUSED_EXPIRED, "the incoming payment has expired")
    return msgspec.structs.replace(payment, completed=True)


def expire(payment: IncomingPayment, now_ms: int) -> IncomingPayment | None:
    """The timer's transition; None when there is nothing to do (completed, or not yet due)."""
    if payment.completed or payment.expired or now_ms < payment.expires_at_ms:
        return None
    return msgspec.structs.replace(payment, expired=True)
