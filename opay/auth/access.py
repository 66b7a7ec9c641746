"""Access rights as a grant states them, and what a request needs of them."""

from __future__ import annotations

from typing import Awaitable, Callable, Literal
from urllib.parse import urlsplit

import msgspec

from opay.domain.amounts import Asset, parse_uint64
from opay.domain.errors import DomainError, Invalid
from opay.domain.grant_spend import Limits
from opay.domain.intervals import parse_interval

ResourceType = Literal["incoming-payment", "outgoing-payment", "quote"]
# How many access items one grant request may hold.
MAX_ACCESS_ITEMS = 3

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


async def check_access(access: list[AccessItem], interactive: bool, wallet_asset: Callable[[str], Awaitable[Asset | None]]) -> None:
    """What a grant request may ask for, or Invalid("invalid_request") saying why not.
    `wallet_asset`: the asset of a wallet address of this server by URL, None for any other URL."""
    if not access or len(access) > MAX_ACCESS_ITEMS:
        raise Invalid("invalid_request", f"access must hold 1 to {MAX_ACCESS_ITEMS} items")
    for item in access:
        wrong = invalid_actions(item)
        if wrong or not item.actions:
            raise Invalid("invalid_request", f"invalid actions for {item.type}: {wrong or 'none given'}")
        if item.type == "outgoing-payment":
            if not interactive:
                raise Invalid(
                    "invalid_request", 'outgoing-payment access needs an interactive grant: send interact {"start": ["redirect"]}'
                )
            if item.identifier is None:
                raise Invalid("invalid_request", "outgoing-payment access needs an identifier: the wallet address to pay from")
        if "list-all" in item.actions:
            # Enumerating a wallet's resources, other clients' too, is for its owner to
            # allow. Reading one by URL (read-all) is not: a sender's ASE must read the
            # incoming payment it pays, and the unguessable URL is the capability.
            if not interactive:
                raise Invalid(
                    "invalid_request", f'list-all on {item.type} needs an interactive grant: send interact {{"start": ["redirect"]}}'
                )
            if item.identifier is None:
                raise Invalid("invalid_request", f"list-all on {item.type} needs an identifier: the wallet address to list")
        asset = None if item.identifier is None else await wallet_asset(item.identifier)
        if item.identifier is not None and asset is None:
            raise Invalid("invalid_request", f"identifier {item.identifier} is not a wallet address of this server")
        if item.type == "outgoing-payment":
            if asset is None:  # an identifier is required above
                raise Invalid("invalid_request", "outgoing-payment access needs an identifier: the wallet address to pay from")
            check_limits(item, asset)
        elif item.limits is not None:
            raise Invalid("invalid_request", f"limits apply to outgoing-payment access only, not {item.type}")


def check_limits(item: AccessItem, asset: Asset) -> None:
    """An outgoing-payment item's limits: well formed, in the paying wallet address's asset."""
    try:
        limits = parse_limits(item.limits)
    except DomainError as error:
        raise Invalid("invalid_request", error.description, {"reason": error.code}) from None
    if limits.debit_asset is not None and limits.debit_asset != asset:
        raise Invalid(
            "invalid_request",
            f"limits.debitAmount must be in the wallet address's asset, {asset.code} with scale {asset.scale}",
            {"reason": "invalid_asset"},
        )
    if limits.receiver is not None and not _is_http_url(limits.receiver):
        raise Invalid("invalid_request", "limits.receiver must be an http(s) URL", {"reason": "invalid_limits"})


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


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
