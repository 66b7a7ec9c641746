"""Exact conversion between assets and sending fees. Fractions only; every rounding is named.

Rounding, in one place:
- a fee's basis-point part rounds up (the fee never undercharges by a fraction of a unit,
  and the fee is stated in the quote before the sender consents);
- converting what the sender pays into what the receiver gets rounds down, so opay never
  promises more than the converted value it holds;
- the principal needed for a fixed receive amount rounds up, to the least whole unit
  that delivers it, and the debit is exactly that principal plus its fee.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

import msgspec

from opay.domain.amounts import UINT64_MAX, Asset
from opay.domain.errors import Invalid

BASIS_POINTS = 10_000


class FeeSchedule(msgspec.Struct, frozen=True):
    fixed: int = 0  # in the sending asset's smallest unit
    basis_points: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.fixed <= UINT64_MAX and 0 <= self.basis_points <= BASIS_POINTS


def parse_rate(text: object) -> Fraction:
    """A positive decimal string ("0.9137") read exactly: never through a float."""
    if not isinstance(text, str):
        raise Invalid("invalid_rate", "a rate must be a decimal string")
    try:
        value = Fraction(Decimal(text))
    except (InvalidOperation, ValueError):
        raise Invalid("invalid_rate", f"{text!r} is not a decimal rate") from None
    if value <= 0:
        raise Invalid("invalid_rate", "a rate must be positive")
    return value


def unit_rate(rate: Fraction, source: Asset, destination: Asset) -> Fraction:
    """Destination smallest units per source smallest unit."""
    return rate * Fraction(10) ** (destination.scale - source.scale)


def fee(principal: int, schedule: FeeSchedule) -> int:
    return schedule.fixed + -(-principal * schedule.basis_points // BASIS_POINTS)


def principal_within(debit: int, schedule: FeeSchedule) -> int:
    """The largest principal whose principal + fee fits in `debit` (0 if none does)."""
    budget = debit - schedule.fixed
    if budget <= 0:
        return 0
    principal = budget * BASIS_POINTS // (BASIS_POINTS + schedule.basis_points)
    while principal + 1 + fee(principal + 1, schedule) - schedule.fixed <= budget:
        principal += 1
    while principal > 0 and principal + fee(principal, schedule) > debit:
        principal -= 1
    return principal


def receive_for(principal: int, rate: Fraction) -> int:
    return principal * rate.numerator // rate.denominator


def principal_for(receive: int, rate: Fraction) -> int:
    """The least principal that converts to at least `receive`."""
    return -(-receive * rate.denominator // rate.numerator)
