"""Amounts are unsigned 64-bit integers in an asset's smallest unit. No floats, ever."""

from __future__ import annotations

import re

import msgspec

from opay.domain.errors import Invalid

UINT64_MAX = 2**64 - 1

_CANONICAL_UINT = re.compile(r"(0|[1-9][0-9]*)")


class Asset(msgspec.Struct, frozen=True, array_like=True):
    code: str
    scale: int


def parse_uint64(value: object, field: str) -> int:
    """The wire form is a decimal string; anything else is refused, never coerced."""
    if not isinstance(value, str) or _CANONICAL_UINT.fullmatch(value) is None:
        raise Invalid("invalid_amount", f"{field} must be a non-negative integer string", {"field": field})
    number = int(value)
    if number > UINT64_MAX:
        raise Invalid("invalid_amount", f"{field} exceeds the uint64 range", {"field": field})
    return number


def require_asset(given: Asset, expected: Asset, field: str) -> None:
    if given != expected:
        raise Invalid(
            "invalid_asset",
            f"{field} must be in {expected.code} with scale {expected.scale}",
            {"field": field, "assetCode": expected.code, "assetScale": expected.scale},
        )
