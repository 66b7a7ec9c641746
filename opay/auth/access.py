"""Access rights as a grant states them, and what a request needs of them."""

from __future__ import annotations

from typing import Literal

import msgspec

from opay.domain.amounts import Asset, parse_uint64
from opay.domain.errors import Invalid
from opay.domain.grant_spend import Limits
from opay.domain.intervals import parse_interval

ResourceType = Literal["incoming-payment", "outgoing-payment", "quote"]

ACTIONS: dict[str, frozenset[str]] = {
    "incoming-payment": frozenset({"create", "complete", "read", "read-all", "list", "list-all"}),
    "outgoing-payment": frozenset({"create", "read", "read-all", "list", "list-all"}),
    "quote": frozenset({"create", "read", "read-all"}),
}
# A wider action that satisfies a narrower one, and widens the scope to every client.
_WIDER = {"read": "read-all", "list": "list-all"}


class AccessItem(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    type: ResourceType
    actions: list[str]
    identifier: str | None = None
    limits: dict | None = None


class Permit(msgspec.Struct, frozen=True):
    """What a token lets this request do: `all_clients` lifts the own-resources filter."""

    item: AccessItem
    all_clients: bool


def invalid_actions(item: AccessItem) -> list[str]:
    return [action for action in item.actions if action not in ACTIONS[item.type]]


def permit(access: list[AccessItem], resource_type: str, action: str, wallet_address: str | None) -> Permit | None:
    """The first item granting `action` on `resource_type` for `wallet_address`, preferring
    the wider `-all` form. An item without an identifier covers any wallet address."""
    wider = _WIDER.get(action)
    best: Permit | None = None
    for item in access:
        if item.type != resource_type:
            continue
        if wallet_address is not None and item.identifier is not None and item.identifier != wallet_address:
            continue
        if wider is not None and wider in item.actions:
            return Permit(item, all_clients=True)
        if best is None and action in item.actions:
            best = Permit(item, all_clients=False)
    return best


def parse_limits(raw: dict | None) -> Limits:
    """An outgoing-payment access item's `limits`, as the domain checks them."""
    if not raw:
        return Limits()
    try:
        wire = msgspec.convert(raw, _LimitsWire)
    except msgspec.ValidationError as error:
        raise Invalid("invalid_limits", f"invalid limits: {error}") from None
    if wire.debitAmount is not None and wire.receiveAmount is not None:
        raise Invalid("invalid_limits", "limits may hold debitAmount or receiveAmount, not both")
    debit = receive = None
    debit_asset = receive_asset = None
    if wire.debitAmount is not None:
        debit = parse_uint64(wire.debitAmount.value, "limits.debitAmount.value")
        debit_asset = Asset(wire.debitAmount.assetCode, wire.debitAmount.assetScale)
    if wire.receiveAmount is not None:
        receive = parse_uint64(wire.receiveAmount.value, "limits.receiveAmount.value")
        receive_asset = Asset(wire.receiveAmount.assetCode, wire.receiveAmount.assetScale)
    return Limits(
        debit=debit,
        debit_asset=debit_asset,
        receive=receive,
        receive_asset=receive_asset,
        receiver=wire.receiver,
        interval=None if wire.interval is None else parse_interval(wire.interval),
    )


class _AmountWire(msgspec.Struct, frozen=True):
    value: str
    assetCode: str
    assetScale: int


class _LimitsWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    receiver: str | None = None
    interval: str | None = None
    debitAmount: _AmountWire | None = None
    receiveAmount: _AmountWire | None = None
