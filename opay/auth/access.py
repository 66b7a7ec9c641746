"""Access rights as a grant states them, and what a request needs of them."""

from __future__ import annotations

from typing import Literal

import msgspec

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
