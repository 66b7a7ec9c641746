"""Quotes: a binding price for one payment, valid until expiresAt, usable once."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal, get_args

import msgspec

from opay.domain import exchange
from opay.domain.amounts import UINT64_MAX, Asset
from opay.domain.errors import Conflict, Invalid


class Rate(msgspec.Struct, frozen=True, array_like=True):
    """An exact positive ratio (num/den), as it is stored: never a float."""

    num: int
    den: int

    @classmethod
    def of(cls, value: Fraction) -> "Rate":
        value = Fraction(value)
        return cls(value.numerator, value.denominator)

    @property
    def value(self) -> Fraction:
        return Fraction(self.num, self.den)


class Remote(msgspec.Struct, frozen=True, kw_only=True):
    """What paying a receiver on another server takes, fixed when it was quoted.

    Units: the STREAM sender's source unit is the peer link's smallest unit; rates are
    receiver smallest units per link smallest unit (what sender.py's machine takes)."""

    peer: str  # the ILP peer whose route matched the receiver's ILP address
    link_asset: Asset  # that peer link's asset
    min_rate: Rate  # the least a packet may deliver per link unit: the probe's low bound x (1 - slippage)
    rate_low: Rate  # the probe's bounds on the path's rate: [low, high)
    rate_high: Rate
    max_source: int  # link units the payment may spend at most: floor(principal x local rate)


class Quote(msgspec.Struct, frozen=True, kw_only=True, tag="quote"):
    id: str
    wallet_address: str
    client: str | None
    receiver: str
    debit_asset: Asset
    receive_asset: Asset
    debit: int
    receive: int
    fee: int
    expires_at_ms: int
    created_at_ms: int
    # Backing its payment: a payment made from a quote takes the quote's id, so the quote
    # names no other (schema 1 kept that id, always its own, as `used_by`).
    used: bool = False
    # A receiver on another server (schema 3): None for a receiver of this server.
    remote: Remote | None = None


Status = Literal["open", "used", "expired"]
STATUSES: tuple[Status, ...] = get_args(Status)


def status(quote: Quote, now_ms: int) -> Status:
    """Used: it backs a payment (whatever became of it); expired: unused past expiresAt;
    open: it may still back one."""
    if quote.used:
        return "used"
    return "expired" if now_ms >= quote.expires_at_ms else "open"


def upgrade_from_schema_1(fields: dict) -> dict:
    """A snapshot's fields when quotes kept `used_by` (their own id or None)."""
    fields = dict(fields)
    fields["used"] = fields.pop("used_by", None) is not None
    return fields


def upgrade_from_schema_2(fields: dict) -> dict:
    """Schema 2 knew only local receivers: no `remote` (None)."""
    return dict(fields)


class Price(msgspec.Struct, frozen=True):
    debit: int
    receive: int
    fee: int


def price(
    *,
    debit: int | None,
    receive: int | None,
    rate: Fraction,
    sender: Asset,
    receiver: Asset,
    fees: exchange.FeeSchedule,
    remaining: int | None,
) -> Price:
    """Fixed send (debit given), fixed receive (receive given), or the receiver's remainder."""
    if debit is not None and receive is not None:
        raise Invalid("invalid_request", "give debitAmount or receiveAmount, not both")
    per_unit = exchange.unit_rate(rate, sender, receiver)
    if debit is None and receive is None:
        if remaining is None:
            raise Invalid("invalid_request", "the receiver has no incomingAmount: give debitAmount or receiveAmount")
        receive = remaining
        if receive == 0:
            raise Invalid("invalid_receiver", "the receiver has nothing left to receive")
    if receive is not None:
        if receive <= 0:
            raise Invalid("invalid_amount", "receiveAmount must be greater than zero", {"field": "receiveAmount"})
        if remaining is not None and receive > remaining:
            raise Invalid("invalid_amount", "receiveAmount exceeds what the receiver still accepts", {"remaining": str(remaining)})
        principal = exchange.principal_for(receive, per_unit)
        total = principal + exchange.fee(principal, fees)
        return _within_uint64(Price(debit=total, receive=receive, fee=total - principal))
    assert debit is not None
    if debit <= 0:
        raise Invalid("invalid_amount", "debitAmount must be greater than zero", {"field": "debitAmount"})
    principal = exchange.principal_within(debit, fees)
    delivered = exchange.receive_for(principal, per_unit)
    if delivered == 0:
        least = exchange.principal_for(1, per_unit)
        raise Invalid(
            "amount_too_small",
            "debitAmount is too small to deliver anything after fees",
            {"minSendAmount": str(least + exchange.fee(least, fees))},
        )
    if remaining is not None and delivered > remaining:
        raise Invalid("invalid_amount", "debitAmount would deliver more than the receiver still accepts", {"remaining": str(remaining)})
    return _within_uint64(Price(debit=debit, receive=delivered, fee=debit - principal))


def remote_rates(
    *, local: Fraction, sender: Asset, link: Asset, receiver: Asset, probed_low: Fraction, slippage: Fraction
) -> tuple[Fraction, Fraction]:
    """(rate, min_rate) for a receiver on another server, exact:
    - `min_rate`, receiver units per link unit: the probe's low bound (the least the path
      was seen to deliver) x (1 - slippage), never more than the path delivers;
    - `rate`, receiver major units per sender major unit, for `price`: the local rate of the
      sender's asset to the link's (1 when they are the same) times `min_rate`. `price`
      rounds as for a local receiver (receive down, principal up)."""
    if not 0 <= slippage < 1:
        raise ValueError("slippage must be in [0, 1)")
    min_rate = Fraction(probed_low) * (1 - Fraction(slippage))
    per_unit = exchange.unit_rate(local, sender, link) * min_rate
    return per_unit / Fraction(10) ** (receiver.scale - sender.scale), min_rate


def max_source(principal: int, *, local: Fraction, sender: Asset, link: Asset) -> int:
    """The link units `principal` (sender units, the debit less its fee) buys at the local
    rate, rounded down: the payment never spends on the link more than it was paid for."""
    return exchange.receive_for(principal, exchange.unit_rate(local, sender, link))


def _within_uint64(priced: Price) -> Price:
    """Every amount of a price is a uint64 on the wire and in every encoding: a rate that
    multiplies a large debit past it is refused here, before anything is stored."""
    for field, value in (("debitAmount", priced.debit), ("receiveAmount", priced.receive), ("fee", priced.fee)):
        if not 0 <= value <= UINT64_MAX:
            raise Invalid("invalid_amount", f"the quote's {field} would exceed the uint64 range", {"field": field})
    return priced


def use(quote: Quote, payment_id: str, now_ms: int) -> Quote:
    """Bind the quote to its outgoing payment (the one of its own id), before its expiresAt.
    Binding it again is a no-op, but only before expiresAt too: every attempt is checked
    against now, so a retry after it opens nothing (it may still find the payment an
    earlier attempt opened in time: the payment entity answers that)."""
    if payment_id != quote.id:
        raise Conflict("quote_used", "a quote backs only the outgoing payment of its own id")
    if now_ms >= quote.expires_at_ms:
        raise Conflict("quote_expired", "the quote has expired")
    return quote if quote.used else msgspec.structs.replace(quote, used=True)


def unuse(quote: Quote, payment_id: str) -> Quote:
    """Release the binding when the payment could not be created (e.g. over its grant's limits)."""
    return msgspec.structs.replace(quote, used=False) if quote.used and payment_id == quote.id else quote
